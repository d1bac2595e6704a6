package bacnet

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
)

// ScanOptions configure Scan.
type ScanOptions struct {
	// Client settings: the local address, broadcast or BBMD, timeouts.
	Client bacnet.Config
	// To asks one device or router directly instead of broadcasting.
	To *bacnet.Address
	// Network is where Who-Is goes: 0 the local network, N the remote
	// network N, bacnet.GlobalNetwork every network.
	Network uint16
	// Low and High bound the instances asked (Low < 0: all).
	Low, High int
	// Wait is how long I-Am answers are collected. Default 3s.
	Wait time.Duration
	// Rate is the most requests per second, across all devices. Default
	// DefaultDiscoverRate.
	Rate float64
	// PerDevice bounds the time spent on one device, so a broken one cannot
	// hang the scan. Default 2m.
	PerDevice time.Duration
	// Parallel is how many devices are read at once. Default 4.
	Parallel int
	// Progress, if set, is called after each device, never concurrently.
	Progress func(done, total int, r DeviceReport)
	Logger   *slog.Logger
}

// DeviceReport is what a scan found of one device.
type DeviceReport struct {
	Instance     uint32   `json:"instance"`
	Address      string   `json:"address"`
	Name         string   `json:"name,omitempty"`
	MaxAPDU      int      `json:"max_apdu"`
	Segmentation string   `json:"segmentation"`
	Vendor       uint32   `json:"vendor_id"`
	RPM          bool     `json:"read_property_multiple"`
	Objects      []Object `json:"objects,omitempty"`
	Err          string   `json:"error,omitempty"`
}

// Scan finds devices with Who-Is and reads each one's objects, names,
// units and trend logs through the read-only guard. A device that fails
// is reported with its error; the others are still read.
func Scan(ctx context.Context, o ScanOptions) ([]DeviceReport, error) {
	if o.Wait <= 0 {
		o.Wait = 3 * time.Second
	}
	if o.Rate <= 0 {
		o.Rate = DefaultDiscoverRate
	}
	if o.PerDevice <= 0 {
		o.PerDevice = 2 * time.Minute
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Client.Logger = o.Logger
	c, err := bacnet.New(ctx, o.Client)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	devs, err := c.WhoIs(ctx, o.To, o.Network, o.Low, o.High, o.Wait)
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	slices.SortFunc(devs, func(a, b bacnet.Device) int { return int(a.Instance) - int(b.Instance) })
	reports := make([]DeviceReport, len(devs))
	pace := newPacer(time.Duration(float64(time.Second) / o.Rate))
	sem := make(chan struct{}, o.Parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	for i, dev := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, o.PerDevice)
			defer cancel()
			reports[i] = scanDevice(dctx, c, dev, pace)
			// Progress is called under the lock: one call at a time, in
			// the order devices finish.
			mu.Lock()
			defer mu.Unlock()
			done++
			if o.Progress != nil {
				o.Progress(done, len(devs), reports[i])
			}
		}()
	}
	wg.Wait()
	return reports, ctx.Err()
}

func scanDevice(ctx context.Context, c *bacnet.Client, dev bacnet.Device, pace *pacer) DeviceReport {
	r := DeviceReport{Instance: dev.Instance, Address: dev.Addr.String(), MaxAPDU: dev.MaxAPDU,
		Segmentation: dev.Segmentation.String(), Vendor: dev.Vendor}
	devObj := bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: dev.Instance}
	if err := pace.wait(ctx); err != nil {
		r.Err = err.Error()
		return r
	}
	if v, err := c.ReadProperty(ctx, dev, devObj, bacnet.Prop(bacnet.PropObjectName)); err == nil && len(v) == 1 {
		r.Name = v[0].Str
	}
	if err := pace.wait(ctx); err != nil {
		r.Err = err.Error()
		return r
	}
	if v, err := c.ReadProperty(ctx, dev, devObj, bacnet.Prop(bacnet.PropProtocolServicesSupported)); err == nil && len(v) == 1 {
		r.RPM = v[0].Bits.Bit(int(bacnet.ServiceReadPropertyMultiple))
	}
	objs, err := DiscoverObjects(ctx, c, dev, DiscoverOptions{RPM: r.RPM, pacer: pace})
	if err != nil {
		r.Err = err.Error()
	}
	r.Objects = objs
	return r
}

// StarterConfig renders a devices section for the agent configuration
// from a scan: one device per report that answered, every readable object
// a point, with trend logs. localAddress and broadcast are repeated in
// each device, as the driver needs them.
func StarterConfig(reports []DeviceReport, localAddress, broadcast string) (string, error) {
	type pointYAML struct {
		Ref      string `yaml:"ref"`
		Name     string `yaml:"name,omitempty"`
		Unit     string `yaml:"unit,omitempty"`
		TrendLog string `yaml:"trend_log,omitempty"`
	}
	type settingsYAML struct {
		DeviceInstance uint32 `yaml:"device_instance"`
		Address        string `yaml:"address"`
		LocalAddress   string `yaml:"local_address,omitempty"`
		Broadcast      string `yaml:"broadcast,omitempty"`
	}
	type deviceYAML struct {
		Name     string       `yaml:"name"`
		Driver   string       `yaml:"driver"`
		Interval string       `yaml:"interval"`
		Settings settingsYAML `yaml:"settings"`
		Points   []pointYAML  `yaml:"points"`
	}
	var devices []deviceYAML
	for _, r := range reports {
		if len(r.Objects) == 0 {
			continue
		}
		d := deviceYAML{Name: deviceName(r), Driver: Name, Interval: "1m",
			Settings: settingsYAML{DeviceInstance: r.Instance, Address: r.Address, LocalAddress: localAddress, Broadcast: broadcast}}
		for _, ob := range r.Objects {
			p := pointYAML{Ref: Ref(ob.ID, bacnet.Prop(bacnet.PropPresentValue)), Name: ob.Name, Unit: ob.Unit}
			if ob.TrendLog != nil {
				p.TrendLog = ob.TrendLog.String()
			}
			d.Points = append(d.Points, p)
		}
		devices = append(devices, d)
	}
	b, err := yaml.Marshal(map[string]any{"devices": devices})
	if err != nil {
		return "", err
	}
	return "# Written by sightglass-agent discover bacnet: check names and intervals,\n# drop what you do not need, then paste the devices into the agent config.\n" + string(b), nil
}

// deviceName makes a configuration name from the device's name and
// instance: names are in each point's pseudonym, so they must be stable.
func deviceName(r DeviceReport) string {
	n := strings.ToLower(strings.TrimSpace(r.Name))
	n = strings.Map(func(c rune) rune {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			return c
		}
		return '-'
	}, n)
	n = strings.Trim(n, "-")
	if n == "" {
		return fmt.Sprintf("bacnet-%d", r.Instance)
	}
	return fmt.Sprintf("%s-%d", n, r.Instance)
}
