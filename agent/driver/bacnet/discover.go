package bacnet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Object is what discovery learned of one object of a device.
type Object struct {
	ID          bacnet.ObjectID
	Name        string
	Description string
	Unit        string
	// TrendLog is the Trend Log object logging this object's present
	// value, if the device has one.
	TrendLog *bacnet.ObjectID
}

// readable lists the object types whose present value is a point.
var readable = map[bacnet.ObjectType]bool{
	bacnet.ObjectAnalogInput: true, bacnet.ObjectAnalogOutput: true, bacnet.ObjectAnalogValue: true,
	bacnet.ObjectBinaryInput: true, bacnet.ObjectBinaryOutput: true, bacnet.ObjectBinaryValue: true,
	bacnet.ObjectMultiStateInput: true, bacnet.ObjectMultiStateOutput: true, bacnet.ObjectMultiStateValue: true,
	bacnet.ObjectIntegerValue: true, bacnet.ObjectPositiveIntegerValue: true, 12: true, // loop
}

// DefaultDiscoverRate is the most requests per second discovery sends
// unless told otherwise, to all devices through one socket together: a
// discovery must not crowd out the polls of the controllers (or an MS/TP
// trunk) it reads.
const DefaultDiscoverRate = 20

// DiscoverOptions tune DiscoverObjects.
type DiscoverOptions struct {
	// RPM says the device supports ReadPropertyMultiple.
	RPM bool
	// Every is the least time between two requests (rate limiting);
	// zero does not wait.
	Every time.Duration
	pacer *pacer // shared by a Scan's devices
}

// DiscoverObjects reads a device's object list (element by element when
// the whole list does not fit an answer), then each readable object's
// name, description and units, and which Trend Logs log which objects.
func DiscoverObjects(ctx context.Context, c *bacnet.Client, dev bacnet.Device, o DiscoverOptions) ([]Object, error) {
	pace := o.pacer
	if pace == nil {
		pace = newPacer(o.Every)
	}
	devObj := bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: dev.Instance}
	if err := pace.wait(ctx); err != nil {
		return nil, err
	}
	var ids []bacnet.ObjectID
	list, err := c.ReadProperty(ctx, dev, devObj, bacnet.Prop(bacnet.PropObjectList))
	if err == nil {
		ids = objectIDs(list)
	} else {
		if ctx.Err() != nil || errors.Is(err, bacnet.ErrTimeout) {
			return nil, fmt.Errorf("reading the object list of device %d: %w", dev.Instance, err)
		}
		// Too long for one answer (an abort, or an error): element by element.
		n, err := c.ReadProperty(ctx, dev, devObj, bacnet.PropertyRef{ID: bacnet.PropObjectList, Index: 0})
		if err != nil || len(n) != 1 || n[0].Kind != bacnet.KindUnsigned {
			return nil, fmt.Errorf("reading the object list size of device %d: %v", dev.Instance, err)
		}
		for i := uint32(1); i <= uint32(min(n[0].Uint, 100000)); i++ {
			if err := pace.wait(ctx); err != nil {
				return nil, err
			}
			v, err := c.ReadProperty(ctx, dev, devObj, bacnet.PropertyRef{ID: bacnet.PropObjectList, Index: i})
			if err != nil {
				return nil, fmt.Errorf("reading object list element %d of device %d: %w", i, dev.Instance, err)
			}
			ids = append(ids, objectIDs(v)...)
		}
	}
	var objs []Object
	var trends []bacnet.ObjectID
	for _, id := range ids {
		switch {
		case readable[id.Type]:
			objs = append(objs, Object{ID: id})
		case id.Type == bacnet.ObjectTrendLog:
			trends = append(trends, id)
		}
	}
	props := []bacnet.PropertyRef{bacnet.Prop(bacnet.PropObjectName), bacnet.Prop(bacnet.PropDescription), bacnet.Prop(bacnet.PropUnits)}
	// Names, descriptions and units, a few objects per request so that an
	// answer fits even a device that cannot segment.
	per := max(1, (dev.MaxAPDU-apduHeader)/(ackObject+3*40))
	for start := 0; start < len(objs); start += per {
		chunk := objs[start:min(start+per, len(objs))]
		if err := pace.wait(ctx); err != nil {
			return nil, err
		}
		if err := describe(ctx, c, dev, o.RPM, chunk, props, pace); err != nil {
			return nil, err
		}
	}
	byID := map[bacnet.ObjectID]int{}
	for i, ob := range objs {
		byID[ob.ID] = i
	}
	for _, tl := range trends {
		if err := pace.wait(ctx); err != nil {
			return nil, err
		}
		v, err := c.ReadProperty(ctx, dev, tl, bacnet.Prop(bacnet.PropLogDeviceObjectProperty))
		if err != nil || len(v) < 2 {
			continue // a trend log of something else, or unreadable: not a point's
		}
		src, err1 := v[0].ContextAs(bacnet.TagObjectID)
		prop, err2 := v[1].ContextAs(bacnet.TagEnumerated)
		if err1 != nil || err2 != nil || prop.Uint != uint64(bacnet.PropPresentValue) {
			continue
		}
		// A reference to another device ([3]) is not this device's point.
		if len(v) > 2 && v[len(v)-1].Context == 3 {
			other, err := v[len(v)-1].ContextAs(bacnet.TagObjectID)
			if err != nil || other.Object.Instance != dev.Instance {
				continue
			}
		}
		if i, ok := byID[src.Object]; ok && objs[i].TrendLog == nil {
			objs[i].TrendLog = &tl
		}
	}
	return objs, nil
}

func objectIDs(vals []bacnet.Value) []bacnet.ObjectID {
	var out []bacnet.ObjectID
	for _, v := range vals {
		if v.Kind == bacnet.KindObjectID {
			out = append(out, v.Object)
		}
	}
	return out
}

// describe fills in names, descriptions and units of objs.
func describe(ctx context.Context, c *bacnet.Client, dev bacnet.Device, rpm bool, objs []Object, props []bacnet.PropertyRef, pace *pacer) error {
	set := func(ob *Object, p bacnet.PropertyID, vals []bacnet.Value) {
		if len(vals) != 1 {
			return
		}
		switch p {
		case bacnet.PropObjectName:
			ob.Name = vals[0].Str
		case bacnet.PropDescription:
			ob.Description = vals[0].Str
		case bacnet.PropUnits:
			ob.Unit = UnitName(uint32(vals[0].Uint))
		}
	}
	if rpm {
		specs := make([]bacnet.ReadAccessSpec, len(objs))
		for i, ob := range objs {
			specs[i] = bacnet.ReadAccessSpec{Object: ob.ID, Properties: props}
		}
		res, err := c.ReadPropertyMultiple(ctx, dev, specs)
		if err == nil {
			for _, r := range res {
				for i := range objs {
					if objs[i].ID != r.Object {
						continue
					}
					for _, pr := range r.Results {
						if pr.Err == nil {
							set(&objs[i], pr.Property.ID, pr.Values)
						}
					}
				}
			}
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, bacnet.ErrTimeout) {
			return err
		}
		// Any other failure: ask property by property.
	}
	for i := range objs {
		for _, p := range props {
			if p.ID == bacnet.PropUnits && !slices.Contains([]bacnet.ObjectType{bacnet.ObjectAnalogInput, bacnet.ObjectAnalogOutput, bacnet.ObjectAnalogValue}, objs[i].ID.Type) {
				continue
			}
			if err := pace.wait(ctx); err != nil {
				return err
			}
			v, err := c.ReadProperty(ctx, dev, objs[i].ID, p)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, bacnet.ErrTimeout) {
					return err
				}
				continue
			}
			set(&objs[i], p.ID, v)
		}
	}
	return nil
}

// pacer spaces requests at least every apart; it is shared by the
// goroutines of one scan, so the rate holds for the whole network.
type pacer struct {
	every time.Duration
	mu    sync.Mutex
	next  time.Time
}

func newPacer(every time.Duration) *pacer { return &pacer{every: every} }

func (p *pacer) wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if p == nil || p.every <= 0 {
		return nil
	}
	// Reserve a slot, then sleep until it comes.
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.every)
	p.mu.Unlock()
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Discover lists the device's readable objects as points, with names,
// units and trend logs from the device, at most discover_rate requests a
// second (default DefaultDiscoverRate; the agent discovers its devices one
// after another, so the rate holds for the network too).
func (d *Driver) Discover(ctx context.Context) ([]driver.Point, error) {
	c, dev, rpm, err := d.session(ctx)
	if err != nil {
		return nil, err
	}
	every := time.Duration(float64(time.Second) / d.cfg.discoverRate)
	objs, err := DiscoverObjects(ctx, c, dev, DiscoverOptions{RPM: rpm, Every: every})
	if err != nil {
		return nil, fmt.Errorf("discovering device %d: %w", dev.Instance, err)
	}
	out := make([]driver.Point, 0, len(objs))
	for _, ob := range objs {
		p := driver.Point{Ref: Ref(ob.ID, bacnet.Prop(bacnet.PropPresentValue)), Name: ob.Name, Unit: ob.Unit, Description: ob.Description, Kind: ob.ID.Type.String()}
		if ob.TrendLog != nil {
			p.Settings = yamlSettings{PointSettings{TrendLog: ob.TrendLog.String()}}
		}
		out = append(out, p)
	}
	return out, nil
}
