// Compiled with include/ as the only include path by the `layering_public_internal_include_fails`
// test, which passes only when this fails with the internal header not found: what the public
// headers see is include/duo/ alone, so one of them including an internal header (as engine.h
// once did with this one) fails `layering_public_headers_alone` the same way.
#include "duo/engine.h"
#include "engine/backend.h"

int duo_layering_probe_public_internal() { return 0; }
