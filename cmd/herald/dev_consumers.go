package main

import (
	"context"

	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/filesync"
)

func init() { devConsumers = startDevConsumers }

// startDevConsumers prepares the consumers `herald dev` runs: filesync on
// __cmdb (and mailstore on mail_users once it is built in).
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
	return []devService{{"filesync", func(ctx context.Context) error {
		defer syncer.Close()
		return cons.Run(ctx)
	}}}, nil
}
