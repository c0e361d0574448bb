// Command etcd is the etcd server at exactly the version the pinned Kubernetes release requires, built
// from the same module graph as the Kubernetes binaries (etcd's own go.mod has replace lines that a
// plain `go install` would ignore).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
