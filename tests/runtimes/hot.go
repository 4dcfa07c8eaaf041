package main

import (
	"os"
	"strconv"
	"time"
)

var sink uint64

//go:noinline
func hotA() {
	x := uint64(0)
	for i := uint64(0); i < 7_000_000; i++ {
		x = (x + i*31) ^ (x >> 3)
	}
	sink += x
}

//go:noinline
func hotB() {
	x := uint64(0)
	for i := uint64(0); i < 3_000_000; i++ {
		x = (x + i*31) ^ (x >> 3)
	}
	sink += x
}

func main() {
	millis, _ := strconv.Atoi(os.Args[1])
	end := time.Now().Add(time.Duration(millis) * time.Millisecond)
	for time.Now().Before(end) {
		hotA()
		hotB()
	}
}
