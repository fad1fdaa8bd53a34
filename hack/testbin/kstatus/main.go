// kstatus: prints how sigs.k8s.io/cli-utils' kstatus (what Flux, kpt and cli-utils waiters
// use) reads one object given as JSON on stdin: {"status": "InProgress|Current|Failed|...",
// "message": "..."}. Used by tests/operator_kstatus.rs; never shipped.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: read stdin:", err)
		os.Exit(2)
	}
	// Numbers as int64, as the API machinery decodes them (generation, observedGeneration).
	var obj map[string]interface{}
	if err := utiljson.Unmarshal(data, &obj); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: not a JSON object:", err)
		os.Exit(2)
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	out := map[string]string{"status": res.Status.String(), "message": res.Message}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
