// Package readme keeps the README's configuration reference in step with
// the programs: its test builds every command under cmd/, runs it with -h
// and compares the output with the README's generated blocks.
package readme
