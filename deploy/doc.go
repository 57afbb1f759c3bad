// Package deploy holds no code: it is the home of Herald's deployment files
// (the container image, the nats-server configurations, the PostgreSQL init
// scripts, the systemd units and their environment files) and of the tests
// that keep them in step with the programs they run.
package deploy
