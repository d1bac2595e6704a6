package bacnet

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Settings are a BACnet device's settings. Zero values mean the default
// given on each field.
type Settings struct {
	// DeviceInstance is the device object's instance number. Required.
	DeviceInstance *uint32 `yaml:"device_instance"`
	// Address is where the device is reached: "IP[:port]", or
	// "IP:port/NET:MAC" for a device behind a router (MAC in hex). Empty:
	// found by Who-Is, which needs Broadcast or BBMD.
	Address string `yaml:"address"`
	// LocalAddress is the address to bind on the control NIC, IP:port.
	// Required. Devices sharing it share one socket.
	LocalAddress string `yaml:"local_address"`
	// Broadcast is the control subnet's broadcast address for Who-Is,
	// e.g. 192.168.10.255:47808. No default (see package bacnet).
	Broadcast string `yaml:"broadcast"`
	// BBMD registers as a foreign device with this BBMD for Who-Is across
	// subnets.
	BBMD string `yaml:"bbmd"`
	// Timeout of one request attempt. Default 3s.
	Timeout time.Duration `yaml:"timeout"`
	// Retries of a request that timed out. Default 2; -1 for none.
	Retries int `yaml:"retries"`
	// MaxOutstanding is how many requests may be in flight to the device.
	// Default 1.
	MaxOutstanding int `yaml:"max_outstanding"`
	// MaxPerNetwork is how many requests may be in flight to all devices of
	// one routed (MS/TP) network. Default 2.
	MaxPerNetwork int `yaml:"max_per_network"`
	// MaxAPDU caps the device's max APDU below what it announces (some
	// routers announce more than their trunk carries). Default: as announced.
	MaxAPDU int `yaml:"max_apdu"`
	// ReadPropertyMultiple: "auto" (from the device's services supported,
	// and falls back on a reject), "off". Default "auto".
	ReadPropertyMultiple string `yaml:"read_property_multiple"`
	// Timezone of the device's clock, for trend-log timestamps. Default UTC.
	Timezone string `yaml:"timezone"`
	// BackfillAfter is how long a point may go unread before the trend
	// log named by its trend_log setting is read back to fill the gap.
	// Default: the larger of 2m and twice the point's interval (its own,
	// else the device's), so a slowly polled point does not send a
	// ReadRange every poll.
	BackfillAfter time.Duration `yaml:"backfill_after"`
	// BackfillMax bounds how far back a backfill reaches. Default 7 days.
	BackfillMax time.Duration `yaml:"backfill_max"`
	// DiscoverRate is the most requests a second `discover: true` sends
	// to the device. Default DefaultDiscoverRate (20), as the CLI's scan.
	DiscoverRate float64 `yaml:"discover_rate"`
}

// PointSettings are the driver's own keys of a point.
type PointSettings struct {
	// TrendLog names a Trend Log object logging this point, e.g.
	// "trend-log:1"; it fills gaps after the agent or the device was down.
	TrendLog string `yaml:"trend_log,omitempty"`
}

// config is the validated form of Settings.
type config struct {
	instance      uint32
	addr          *bacnet.Address
	client        bacnet.Config
	timeout       time.Duration
	retries       int
	outstanding   int
	maxAPDU       int
	rpm           bool
	loc           *time.Location
	backfillAfter time.Duration // 0: derived per point, see backfillAfterFor
	// interval is the device's read interval from the agent (0 unknown).
	interval    time.Duration
	backfillMax time.Duration
	// backfillRetry is the first wait before a failed backfill is asked
	// again; it doubles per failure up to an hour.
	backfillRetry time.Duration
	discoverRate  float64 // requests a second
}

// defaultBackfillAfter is the least time a point goes unread before a gap
// is backfilled, when backfill_after is not set.
const defaultBackfillAfter = 2 * time.Minute

// backfillAfterFor is how long point p may go unread before its trend log
// is asked for the gap: backfill_after when set, else the larger of 2m and
// twice the point's interval: its own, else the device's. When neither is
// known (a driver built without the agent), observed, the spacing seen
// between its reads, stands in (0: none seen yet).
func (c config) backfillAfterFor(p driver.Point, observed time.Duration) time.Duration {
	if c.backfillAfter > 0 {
		return c.backfillAfter
	}
	iv := p.Interval
	if iv <= 0 {
		iv = c.interval
	}
	if iv <= 0 {
		iv = observed
	}
	return max(defaultBackfillAfter, 2*iv)
}

func parseSettings(s driver.Settings) (config, error) {
	var raw Settings
	if s == nil {
		return config{}, errors.New("settings: missing: bacnet needs at least settings.device_instance")
	}
	if err := s.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return config{}, fmt.Errorf("decoding bacnet settings: %w", err)
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	c := config{rpm: true, backfillMax: 7 * 24 * time.Hour, backfillRetry: time.Minute, discoverRate: DefaultDiscoverRate, maxAPDU: raw.MaxAPDU}
	switch {
	case raw.DeviceInstance == nil:
		bad("settings.device_instance: required: the device object's instance number (0..4194302)")
	case *raw.DeviceInstance >= bacnet.MaxInstance:
		bad("settings.device_instance: %d out of range 0..4194302", *raw.DeviceInstance)
	default:
		c.instance = *raw.DeviceInstance
	}
	if raw.Address != "" {
		a, err := bacnet.ParseAddress(raw.Address)
		if err != nil {
			bad("settings.address: %v", err)
		}
		c.addr = &a
	}
	// What the socket needs is shared by the devices on one local address;
	// timeouts, retries and outstanding requests are each device's own.
	c.client = bacnet.Config{Local: raw.LocalAddress, Broadcast: raw.Broadcast, BBMD: raw.BBMD, PerNetwork: raw.MaxPerNetwork}
	c.timeout, c.retries, c.outstanding = raw.Timeout, raw.Retries, raw.MaxOutstanding
	if raw.LocalAddress == "" {
		bad("settings.local_address: required: the control NIC's IP:port, e.g. 192.168.10.5:47808 (so the agent does not listen on its uplink)")
	} else if ap, err := netip.ParseAddrPort(raw.LocalAddress); err != nil {
		bad("settings.local_address: %q: want IP:port: %v", raw.LocalAddress, err)
	} else if ap.Addr().IsUnspecified() {
		bad("settings.local_address: %s binds every NIC, the uplink included: give the control NIC's address", raw.LocalAddress)
	}
	if raw.Address == "" && raw.Broadcast == "" && raw.BBMD == "" {
		bad("settings.address: set the device's address, or settings.broadcast (or bbmd) so it can be found by Who-Is")
	}
	if raw.Timeout < 0 || raw.MaxOutstanding < 0 || raw.MaxPerNetwork < 0 || raw.Retries < -1 {
		bad("settings: timeout, retries, max_outstanding and max_per_network must not be negative")
	}
	if raw.MaxAPDU != 0 && (raw.MaxAPDU < 50 || raw.MaxAPDU > 1476) {
		bad("settings.max_apdu: %d out of 50..1476", raw.MaxAPDU)
	}
	switch raw.ReadPropertyMultiple {
	case "", "auto":
	case "off":
		c.rpm = false
	default:
		bad("settings.read_property_multiple: %q: want auto or off", raw.ReadPropertyMultiple)
	}
	tz := raw.Timezone
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		bad("settings.timezone: %q is not an IANA time zone: %v", tz, err)
	}
	c.loc = loc
	if raw.BackfillAfter < 0 || raw.BackfillMax < 0 {
		bad("settings: backfill_after and backfill_max must not be negative")
	}
	if raw.BackfillAfter > 0 {
		c.backfillAfter = raw.BackfillAfter
	}
	if raw.BackfillMax > 0 {
		c.backfillMax = raw.BackfillMax
	}
	switch {
	case raw.DiscoverRate < 0 || raw.DiscoverRate > 1000:
		bad("settings.discover_rate: %v: want requests per second, above 0 and at most 1000", raw.DiscoverRate)
	case raw.DiscoverRate > 0:
		c.discoverRate = raw.DiscoverRate
	}
	return c, errors.Join(errs...)
}

// point is a parsed point reference.
type point struct {
	obj   bacnet.ObjectID
	prop  bacnet.PropertyRef
	trend *bacnet.ObjectID
}

// parseRef parses "object-type:instance[/property[index]]", e.g.
// "analog-input:1", "binary-value:3/present-value", "2:7/85".
func parseRef(ref string) (point, error) {
	objPart, propPart, hasProp := strings.Cut(strings.TrimSpace(ref), "/")
	obj, err := parseObject(objPart)
	if err != nil {
		return point{}, fmt.Errorf("ref %q: %w", ref, err)
	}
	p := point{obj: obj, prop: bacnet.Prop(bacnet.PropPresentValue)}
	if hasProp {
		name, idx, hasIdx := strings.Cut(strings.TrimSuffix(propPart, "]"), "[")
		id, err := bacnet.ParsePropertyID(name)
		if err != nil {
			return point{}, fmt.Errorf("ref %q: %w", ref, err)
		}
		p.prop.ID = id
		if hasIdx {
			n, err := strconv.ParseUint(idx, 10, 32)
			if err != nil || n == uint64(bacnet.NoIndex) {
				return point{}, fmt.Errorf("ref %q: array index %q is not a number", ref, idx)
			}
			p.prop.Index = uint32(n)
		}
	}
	return p, nil
}

func parseObject(s string) (bacnet.ObjectID, error) {
	typ, inst, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return bacnet.ObjectID{}, fmt.Errorf("%q: want object-type:instance such as analog-input:1", s)
	}
	t, err := bacnet.ParseObjectType(typ)
	if err != nil {
		return bacnet.ObjectID{}, err
	}
	n, err := strconv.ParseUint(inst, 10, 32)
	if err != nil || n >= bacnet.MaxInstance {
		return bacnet.ObjectID{}, fmt.Errorf("%q: instance %q is not a number in 0..4194302", s, inst)
	}
	return bacnet.ObjectID{Type: t, Instance: uint32(n)}, nil
}

// Ref renders the canonical reference of a property of an object, as
// parseRef reads it; present-value is left implicit.
func Ref(obj bacnet.ObjectID, p bacnet.PropertyRef) string {
	s := fmt.Sprintf("%s:%d", obj.Type, obj.Instance)
	if p.ID != bacnet.PropPresentValue || p.Index != bacnet.NoIndex {
		s += "/" + p.ID.String()
		if p.Index != bacnet.NoIndex {
			s += fmt.Sprintf("[%d]", p.Index)
		}
	}
	return s
}

// parsePoint parses a configured point: its ref and its settings.
func parsePoint(p driver.Point) (point, error) {
	pt, err := parseRef(p.Ref)
	if err != nil {
		return point{}, err
	}
	if p.Settings != nil {
		var ps PointSettings
		if err := p.Settings.Decode(&ps); err != nil && !errors.Is(err, io.EOF) {
			return point{}, fmt.Errorf("point %q: %w", p.Ref, err)
		}
		if ps.TrendLog != "" {
			tl, err := parseObject(ps.TrendLog)
			if err != nil {
				return point{}, fmt.Errorf("point %q: trend_log: %w", p.Ref, err)
			}
			pt.trend = &tl
		}
	}
	return pt, nil
}

// yamlSettings carries point settings that discovery found, in the form
// the configuration would give them.
type yamlSettings struct{ v PointSettings }

// Decode implements driver.Settings.
func (s yamlSettings) Decode(v any) error {
	b, err := yaml.Marshal(s.v)
	if err != nil {
		return err
	}
	return yaml.Load(b, v, yaml.WithKnownFields())
}
