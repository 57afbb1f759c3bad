package change

import (
	"strings"
	"testing"
)

func BenchmarkAppendJSON(b *testing.B) {
	e := sampleUpdate()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = e.AppendJSON(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkEncodeToken(b *testing.B) {
	for _, bc := range []struct{ name, value string }{
		{"plain", "SHA=8f3a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a"},
		{"escaped", "alice@example.com two words.x"},
		{"hashed", strings.Repeat("host.example.com/", 10)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.value)))
			for b.Loop() {
				_ = EncodeToken(bc.value)
			}
		})
	}
}

func BenchmarkNewMsg(b *testing.B) {
	e := sampleUpdate()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewMsg("herald", e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	body, err := sampleUpdate().AppendJSON(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}
