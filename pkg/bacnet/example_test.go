package bacnet_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
)

// Find a device by Who-Is, then read names and status flags of two of its
// objects in one ReadPropertyMultiple. (A simulated device on loopback
// stands in for the building; on a real control network, Broadcast is the
// subnet's broadcast address and Local the control NIC's.)
func Example() {
	ctx := context.Background()
	sim, err := bacnetsim.Start(ctx, bacnetsim.Config{Local: bacnetsim.NewDevice(1001, "AHU-1", 2, 1, 0, false)})
	if err != nil {
		panic(err)
	}
	defer sim.Close()

	c, err := bacnet.New(ctx, bacnet.Config{Local: "127.0.0.1:0", Broadcast: sim.Addr().String()})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	devs, err := c.WhoIs(ctx, nil, bacnet.GlobalNetwork, 1001, 1001, time.Second)
	if err != nil || len(devs) == 0 {
		panic(fmt.Sprint("device 1001 did not answer: ", err))
	}
	res, err := c.ReadPropertyMultiple(ctx, devs[0], []bacnet.ReadAccessSpec{
		{Object: bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 1},
			Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropObjectName), bacnet.Prop(bacnet.PropStatusFlags)}},
		{Object: bacnet.ObjectID{Type: bacnet.ObjectBinaryValue, Instance: 1},
			Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropObjectName), bacnet.Prop(bacnet.PropStatusFlags)}},
	})
	if err != nil {
		panic(err)
	}
	for _, obj := range res {
		fmt.Printf("%v: %v, flags %v\n", obj.Object, obj.Results[0].Values[0], obj.Results[1].Values[0])
	}
	// Output:
	// analog-input:1: AHU-1 AI-1, flags 0000
	// binary-value:1: AHU-1 BV-1, flags 0000
}
