"""Run INSIDE the operator image by `hack/image.sh facts` (python3 - sbom|facts < this file).

`sbom`: every Debian package (dpkg's database) and every Python distribution, one per line.
`facts`: the Python and queuescaler versions, and which compilers or package managers are
left (dpkg stays: it is Debian's essential package database, which the SBOM reads).
Standard library only: the image's Python runs it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
import sys

LEFT_OUT = ("pip", "pip3", "apt", "apt-get", "gcc", "cc", "c++", "g++", "clang", "make")


def sbom() -> None:
    print("# SBOM of the queuescaler image: Debian packages (dpkg), then Python distributions")
    listing = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n"],
                             capture_output=True, text=True, check=True).stdout
    for line in sorted(listing.splitlines()):
        print("deb", line)
    dists = sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower())
    for dist in dists:
        print("python", dist.metadata["Name"], dist.version)


def facts() -> None:
    left = [tool for tool in LEFT_OUT if shutil.which(tool)]
    if importlib.util.find_spec("pip") is not None:
        left.append("pip (module)")
    print(f"python {platform.python_version()}; "
          f"queuescaler {importlib.metadata.version('queuescaler')}; "
          f"compilers and package managers left: {', '.join(left) or 'none but dpkg'}")


if __name__ == "__main__":
    {"sbom": sbom, "facts": facts}[sys.argv[1]]()
