import numpy as np, biomip
import biomip.data as D
from biomip import Image
for sp in (1.0, 0.5):
    n = int(64/sp)
    img = Image(np.full((n,n), 1.0, np.float32), spacing=(sp,sp))
    s, l = D.insert_lesions(img, n=1, radius=6.0, seed=3, mass_effect=0)
    a = np.asarray(l.array if hasattr(l,'array') else l).sum()
    print("spacing", sp, "lesion px", a, "mm^2", a*sp*sp, "nominal", round(np.pi*36,1))
from biomip.features import canny
rng = np.random.default_rng(0); img = rng.random((64,64))
for kw in (dict(low=100.0), dict(high=0.0001), dict(low=0.3)):
    try: print(kw, canny(img, **kw).sum())
    except Exception as e: print(kw, type(e).__name__, e)
