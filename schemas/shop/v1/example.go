package shopv1

import _ "embed"

// ExampleConfig is the example spate.yaml of the shop domain: the
// projections spate dev runs unless given a configuration of its own.
//
//go:embed spate.yaml
var ExampleConfig []byte
