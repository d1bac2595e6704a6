package modbus

import "time"

// SetClock makes the driver's learned limits (holes and their backoff,
// the times kept in the file) and the rest of silent units follow now
// instead of the wall clock.
func SetClock(d *Driver, now func() time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.now = now
}
