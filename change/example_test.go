package change_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/herald-cdc/herald/change"
)

func ExampleEncodeToken() {
	for _, v := range []string{"alice", "SHA=8f3a", "ünïcode", "a.b", "two words", "50%", ""} {
		fmt.Printf("%q → %s\n", v, change.EncodeToken(v))
	}
	// Output:
	// "alice" → alice
	// "SHA=8f3a" → SHA=8f3a
	// "ünïcode" → ünïcode
	// "a.b" → a%2Eb
	// "two words" → two%20words
	// "50%" → 50%25
	// "" → %
}

func ExampleSubject() {
	fmt.Println(change.Subject("herald", "public", "mail_users", []string{"alice"}))
	fmt.Println(change.Subject("herald", "public", "orders", []string{"acme", "42"}))
	fmt.Println(change.Subject("herald", "public", "orders", nil)) // TRUNCATE
	fmt.Println(change.TableFilter("herald", "public", "orders"))
	p, err := change.ParseSubject("herald", "herald.public.orders.acme.42")
	fmt.Println(p.Schema, p.Table, p.Key, err)
	// Output:
	// herald.public.mail_users.alice
	// herald.public.orders.acme.42
	// herald.public.orders.%T
	// herald.public.orders.>
	// public orders [acme 42] <nil>
}

func ExampleNewMsg() {
	e := &change.Envelope{
		V:      change.EnvelopeVersion,
		Source: "main",
		Epoch:  1763839522123456,
		ID:     42,
		TxID:   90211,
		At:     time.Date(2026, 11, 22, 19, 25, 22, 123456000, time.UTC),
		Schema: "public",
		Table:  "mail_users",
		Op:     change.OpUpdate,
		Key:    []string{"alice"},
		New:    json.RawMessage(`{"quota_bytes":10737418240,"username":"alice"}`),
		Old:    json.RawMessage(`{"quota_bytes":5368709120,"username":"alice"}`),
	}
	var err error
	if e.Changed, err = change.Changed(e.Old, e.New); err != nil {
		panic(err)
	}
	m, err := change.NewMsg("herald", e)
	if err != nil {
		panic(err)
	}
	fmt.Println(m.Subject)
	for _, k := range slices.Sorted(maps.Keys(m.Header)) {
		fmt.Printf("%s: %s\n", k, m.Header.Get(k))
	}
	fmt.Println(string(m.Data))

	got, err := change.FromMsg(m.Subject, m.Header, m.Data)
	fmt.Println(got.Op, got.Key, got.Changed, got.Version(), err)
	// Output:
	// herald.public.mail_users.alice
	// Herald-Epoch: 1763839522123456
	// Herald-Id: 42
	// Herald-Op: update
	// Herald-Table: public.mail_users
	// Nats-Msg-Id: main:1763839522123456:42
	// {"v":1,"source":"main","epoch":1763839522123456,"id":42,"txid":90211,"at":"2026-11-22T19:25:22.123456Z","schema":"public","table":"mail_users","op":"update","key":["alice"],"new":{"quota_bytes":10737418240,"username":"alice"},"old":{"quota_bytes":5368709120,"username":"alice"},"changed":["quota_bytes"]}
	// update [alice] [quota_bytes] 1763839522123456:42 <nil>
}
