// Command kube-apiserver is a thin wrapper around the upstream kube-apiserver command, built
// from Go modules so that the tests can run against a real API server.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
