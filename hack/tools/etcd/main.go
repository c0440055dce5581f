// Command etcd is the etcd server, built from the Go module proxy.
//
// The etcd server module replaces its sibling modules with local paths, so this
// tool module pins them to the matching release and calls the server's entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
