package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/poll"
	"github.com/sightglass-bms/sightglass/pkg/anon"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// BuildDevices turns the configured devices into poll devices: each point
// gets its pseudonymous id (a collision is an error), devices with
// `discover: true` are asked for their points first (through the same
// read-only driver), and every driver validates its own settings. All
// problems are reported together.
func BuildDevices(ctx context.Context, cfg *config.Config, reg *driver.Registry, ids *anon.Registry, log *slog.Logger) ([]poll.Device, error) {
	devs, _, err := buildDevices(ctx, cfg, reg, ids, log)
	return devs, err
}

// buildDevices is BuildDevices that also names the devices whose discovery
// failed because they did not answer, so the agent can try again later.
func buildDevices(ctx context.Context, cfg *config.Config, reg *driver.Registry, ids *anon.Registry, log *slog.Logger) ([]poll.Device, []string, error) {
	var devs []poll.Device
	var undiscovered []string
	var errs []error
	for i := range cfg.Devices {
		d := &cfg.Devices[i]
		info, ok := reg.Lookup(d.Driver)
		if !ok {
			errs = append(errs, fmt.Errorf("device %q (line %d): driver: %q is not a known driver (known: %v)", d.Name, d.Line, d.Driver, reg.Names()))
			continue
		}
		dlog := log.With("device", d.Name, "driver", d.Driver)
		points, err := configuredPoints(d, ids)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if d.Discover {
			found, err := discover(ctx, info, d, cfg.DataDir, dlog)
			if errors.Is(err, errDeviceUnreachable) {
				undiscovered = append(undiscovered, d.Name)
				// A device that is down at start-up must not keep the
				// agent, and every other device, from running.
				if len(points) == 0 {
					dlog.Error("discovery failed and no points are configured: this device is not polled until discovery is tried again", "err", err)
					continue
				}
				dlog.Warn("discovery failed: polling the configured points only until discovery is tried again", "err", err, "points", len(points))
				found = nil
				err = nil
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			points, err = mergeDiscovered(d, points, found, ids)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			dlog.Info("discovered points", "points", len(found), "configured", len(d.Points))
		}
		drv, err := info.New(driver.Device{Name: d.Name, Settings: d.DeviceSettings(), Points: points, Logger: dlog, DataDir: cfg.DataDir, Interval: d.Interval})
		if err != nil {
			errs = append(errs, fmt.Errorf("device %q (line %d): %w", d.Name, d.Line, err))
			continue
		}
		devs = append(devs, poll.Device{Name: d.Name, Driver: drv, Points: points, Interval: d.Interval, Timeout: d.Timeout, Concurrency: d.Concurrency})
	}
	if err := errors.Join(errs...); err != nil {
		for _, d := range devs {
			d.Driver.Close()
		}
		return nil, nil, err
	}
	return devs, undiscovered, nil
}

func pointRef(driverName, device, ref string) string {
	return anon.Ref(driverName, device, ref)
}

func configuredPoints(d *config.Device, ids *anon.Registry) ([]driver.Point, error) {
	points := make([]driver.Point, 0, len(d.Points))
	for j := range d.Points {
		p := &d.Points[j]
		id, err := ids.Add(pointRef(d.Driver, d.Name, p.Ref))
		if err != nil {
			return nil, fmt.Errorf("device %q: point %q (line %d): %w", d.Name, p.Ref, p.Line, err)
		}
		points = append(points, driver.Point{ID: id, Ref: p.Ref, Name: p.Name, Unit: p.Unit, Description: p.Description, Kind: p.Kind, Tags: p.Tags, Interval: p.Interval, Settings: p.PointSettings(d.Name)})
	}
	return points, nil
}

// discover asks a throwaway instance of the driver for the device's points,
// so the instance that polls starts clean.
func discover(ctx context.Context, info driver.Info, d *config.Device, dataDir string, log *slog.Logger) ([]driver.Point, error) {
	drv, err := info.New(driver.Device{Name: d.Name, Settings: d.DeviceSettings(), Logger: log, DataDir: dataDir})
	if err != nil {
		return nil, fmt.Errorf("device %q (line %d): %w", d.Name, d.Line, err)
	}
	defer drv.Close()
	disc, ok := drv.(driver.Discoverer)
	if !ok {
		return nil, fmt.Errorf("device %q (line %d): discover: the %s driver cannot discover points; list them under points", d.Name, d.Line, d.Driver)
	}
	if err := drv.Connect(ctx); err != nil {
		return nil, fmt.Errorf("device %q: connecting for discovery: %w: %w", d.Name, err, errDeviceUnreachable)
	}
	found, err := disc.Discover(ctx)
	if err != nil {
		return nil, fmt.Errorf("device %q: discovering points: %w: %w", d.Name, err, errDeviceUnreachable)
	}
	return found, nil
}

// errDeviceUnreachable marks a discovery that failed on the device's side
// (down, not answering), as opposed to a configuration error.
var errDeviceUnreachable = errors.New("device unreachable for discovery")

// mergeDiscovered adds discovered points that the configuration does not
// list. A configured point wins, since the installer may have named it, but
// what it leaves unsaid comes from discovery: its name (when the config
// gave none, so the name is still the ref), unit, description, kind, tags
// and, when it has no settings of its own, the driver settings discovery
// found (a profile's scale and byte order, say).
func mergeDiscovered(d *config.Device, configured, found []driver.Point, ids *anon.Registry) ([]driver.Point, error) {
	have := make(map[string]int, len(configured))
	for i, p := range configured {
		have[p.Ref] = i
	}
	own := make(map[string]bool, len(d.Points))
	for _, p := range d.Points {
		own[p.Ref] = p.Settings != nil && len(p.Settings.Content) > 0
	}
	for _, p := range found {
		if i, ok := have[p.Ref]; ok {
			c := &configured[i]
			if c.Name == c.Ref && p.Name != "" {
				c.Name = p.Name
			}
			if c.Unit == "" {
				c.Unit = p.Unit
			}
			if c.Kind == "" {
				c.Kind = p.Kind
			}
			if c.Description == "" {
				c.Description = p.Description
			}
			if len(c.Tags) == 0 {
				c.Tags = p.Tags
			}
			if !own[p.Ref] && p.Settings != nil {
				c.Settings = p.Settings
			}
			continue
		}
		have[p.Ref] = len(configured)
		id, err := ids.Add(pointRef(d.Driver, d.Name, p.Ref))
		if err != nil {
			return nil, fmt.Errorf("device %q: discovered point %q: %w", d.Name, p.Ref, err)
		}
		p.ID = id
		if p.Name == "" {
			p.Name = p.Ref
		}
		configured = append(configured, p)
	}
	return configured, nil
}
