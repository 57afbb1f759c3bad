// Command child is the program testproc's tests run: it does what its
// arguments say, one after the other.
//
//	print TEXT  write TEXT and a newline to stdout
//	stderr TEXT write TEXT and a newline to stderr
//	env NAME    write NAME=value (or NAME unset) to stdout
//	pid         write its pid to stdout
//	term CODE   from now on, exit with CODE on SIGTERM
//	ignore-term from now on, ignore SIGTERM
//	block       wait for a signal forever
//	exit CODE   exit with CODE
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		op := args[i]
		arg := func() string {
			i++
			return args[i]
		}
		switch op {
		case "print":
			fmt.Println(arg())
		case "stderr":
			fmt.Fprintln(os.Stderr, arg())
		case "env":
			name := arg()
			if v, ok := os.LookupEnv(name); ok {
				fmt.Printf("%s=%s\n", name, v)
			} else {
				fmt.Printf("%s unset\n", name)
			}
		case "pid":
			fmt.Println(os.Getpid())
		case "term":
			code, _ := strconv.Atoi(arg())
			ch := make(chan os.Signal, 1)
			signal.Notify(ch, syscall.SIGTERM)
			go func() {
				<-ch
				fmt.Println("got SIGTERM")
				os.Exit(code)
			}()
		case "ignore-term":
			signal.Ignore(syscall.SIGTERM)
		case "block":
			for {
				time.Sleep(time.Hour)
			}
		case "exit":
			code, _ := strconv.Atoi(arg())
			os.Exit(code)
		default:
			fmt.Fprintf(os.Stderr, "child: unknown step %q\n", op)
			os.Exit(100)
		}
	}
}
