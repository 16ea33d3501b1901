-- wrk script of bench/events: POST the body in the file $EVENTS_BODY with content-type
-- $EVENTS_CONTENT_TYPE (one event as JSON, or an ndjson batch), then print the same
-- BENCH_JSON line as summary.lua. Every request is the same bytes, so wrk still builds it
-- once per connection; meshlet gives each event (or line) its own UUIDv7 id.
local f = assert(io.open(os.getenv("EVENTS_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("EVENTS_CONTENT_TYPE") or "application/json"
wrk.headers["Host"] = "localhost"
dofile(os.getenv("BENCH_LIB") .. "/summary.lua")
