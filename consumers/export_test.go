package consumers

// Queued returns how many items wait in the queue of worker i, so a test
// can hold a batch handler until the messages it expects are queued instead
// of hoping they are. Call it once Ready returned nil.
func (c *Consumer) Queued(i int) int { return len(c.workers[i].in) }
