package main

import (
	"context"
	"os"

	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/filesync"
	"github.com/herald-cdc/herald/consumers/mailstore"
)

// devMailUID owns the dev stack's mailboxes when it runs as root (a
// typical vmail uid); the seed's users have group devMailGID.
const (
	devMailUID = 5000
	devMailGID = 5000
)

func init() { devConsumers = startDevConsumers }

// startDevConsumers prepares the consumers `herald dev` runs: filesync on
// __cmdb and mailstore on mail_users.
func startDevConsumers(ctx context.Context, env *devEnv) ([]devService, error) {
	fcfg := filesync.Config{Dir: env.filesDir}
	syncer, err := filesync.New(fcfg, filesync.WithLogger(env.logger.With("component", "filesync")))
	if err != nil {
		return nil, err
	}
	cons, err := consumers.New(env.js, syncer.ConsumerConfig(consumers.Config{Durable: filesync.DefaultDurable}), syncer,
		consumers.WithLogger(env.logger.With("component", "filesync")))
	if err != nil {
		syncer.Close()
		return nil, err
	}
	mcfg := mailstore.Config{Root: env.mailDir, Chown: mailstore.ChownNever}
	if os.Geteuid() == 0 {
		mcfg.UID, mcfg.Chown = devMailUID, mailstore.ChownAlways
	}
	if err := os.MkdirAll(env.mailDir, 0o755); err != nil {
		syncer.Close()
		return nil, err
	}
	store, err := mailstore.New(mcfg, mailstore.WithLogger(env.logger.With("component", "mailstore")))
	if err != nil {
		syncer.Close()
		return nil, err
	}
	mcons, err := consumers.New(env.js, store.ConsumerConfig(consumers.Config{Durable: mailstore.DefaultDurable}), store,
		consumers.WithLogger(env.logger.With("component", "mailstore")))
	if err != nil {
		syncer.Close()
		store.Close()
		return nil, err
	}
	return []devService{
		{"filesync", func(ctx context.Context) error {
			defer syncer.Close()
			return cons.Run(ctx)
		}},
		{"mailstore", func(ctx context.Context) error {
			defer store.Close()
			return mcons.Run(ctx)
		}},
	}, nil
}
