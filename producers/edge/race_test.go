//go:build race

package edge_test

// raceEnabled: the race detector's shadow memory multiplies a process's RSS.
const raceEnabled = true
