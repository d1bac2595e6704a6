package bacnet

import "fmt"

// units names the BACnetEngineeringUnits seen most in buildings; others
// print as "units-N" so nothing is lost.
var units = map[uint32]string{
	0: "m²", 1: "ft²", 2: "mA", 3: "A", 4: "Ω", 5: "V", 6: "kV", 7: "MV", 8: "VA", 9: "kVA",
	11: "W", 12: "kW", 13: "MW", 14: "BTU", 15: "therm", 16: "Wh", 17: "kWh", 18: "BTU", 19: "kJ/kg",
	20: "BTU/lb", 21: "Hz", 24: "m/s", 27: "ft/min", 29: "%RH", 30: "mm", 31: "m", 32: "in", 33: "ft",
	37: "lx", 38: "fc", 39: "kg", 40: "lb", 45: "kg/h", 47: "W/m²", 48: "W", 49: "BTU/h", 50: "hp", 53: "Pa",
	54: "kPa", 55: "bar", 56: "psi", 57: "cmH₂O", 58: "inH₂O", 59: "mmHg", 60: "inHg", 62: "°C", 63: "K",
	64: "°F", 65: "°C·d", 66: "°F·d", 67: "J", 68: "kJ", 72: "s", 73: "min", 71: "h", 74: "d", 75: "wk",
	76: "mo", 77: "yr", 80: "L", 81: "gal", 82: "m³", 83: "ft³", 84: "ft³/min", 85: "m³/s", 86: "L/s",
	87: "L/min", 88: "gal/min", 89: "°", 90: "°C/h", 91: "°F/h", 95: "", 96: "ppm", 97: "ppb", 98: "%",
	99: "%/s", 100: "/min", 101: "/s", 103: "rpm", 104: "Hz", 108: "W/m²", 118: "kPa", 119: "m³/h",
	120: "ft³/h", 122: "kW·h/m²", 126: "kW/ton", 130: "ton", 132: "L/h", 133: "kWh/ft²", 135: "m³/min",
	142: "Wh", 146: "kVAh", 149: "mA", 151: "g", 160: "MWh", 167: "V·A", 183: "CO₂ ppm", 185: "dB",
}

// UnitName returns the symbol of a BACnetEngineeringUnits value.
func UnitName(u uint32) string {
	if s, ok := units[u]; ok {
		return s
	}
	return fmt.Sprintf("units-%d", u)
}
