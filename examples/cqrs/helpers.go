package main

import (
	"log"
	"os"
)

// What this program needs beside the libraries, here so that it can be
// copied on its own.

// envOr is the environment variable key, or fallback when it is unset.
func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

// check ends the program when err is not nil, saying what failed.
func check(err error, what string) {
	if err != nil {
		log.Fatalf("%s: %v", what, err)
	}
}
