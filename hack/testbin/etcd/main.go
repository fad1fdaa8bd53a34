// Command etcd is a thin wrapper around etcdmain, built from Go modules so that the tests can
// run a real etcd for kube-apiserver.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
