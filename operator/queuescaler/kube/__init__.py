"""The Kubernetes adapter: a target's /scale, status, Events, pods, Secrets and Leases."""
