package fanout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Trim applies the routes' retention every interval until ctx ends. Each
// pass scans the streams a route can write, and trims each to its MaxLen
// and MaxAge, but never past the oldest entry that a consumer group on the
// stream still needs (unread, or read and pending) unless the route is
// Lossy (and no route that is not lossy can write the stream). A stream
// that several routes can write loses only the entries that every one of
// them would delete. It also
// refreshes the groups' lag and pending metrics. Errors are logged and the
// next pass tries again.
func (w *Writer) Trim(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("trim: interval %v: want a positive duration", interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := w.TrimOnce(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("trim", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// TrimOnce runs one trim pass over every route with a retention. A stream
// that fails to trim does not stop the pass: it returns the failures of all
// streams and SCANs, joined.
func (w *Writer) TrimOnce(ctx context.Context) error {
	var errs []error
	seen := map[groupSeries]bool{}
	trimmed := map[string]bool{} // a stream several routes write is trimmed once
	for i := range w.routes {
		rt := &w.routes[i]
		if rt.MaxLen == 0 && rt.MaxAge == 0 {
			continue
		}
		if len(w.cfg.Routes) == 0 {
			// The default route: a stream per known type, no SCAN of
			// the keyspace.
			for _, typ := range w.reg.Types() {
				if err := w.trimStream(ctx, rt, w.Stream(typ), seen); err != nil {
					errs = append(errs, fmt.Errorf("trim %s: %w", w.Stream(typ), err))
				}
			}
			continue
		}
		iter := w.rdb.ScanType(ctx, 0, rt.pattern(), 1000, "stream").Iterator()
		for iter.Next(ctx) {
			key := iter.Val()
			if trimmed[key] || !rt.builds(key, w.knownType) {
				continue // done, or matches the pattern but no event of this route can go there
			}
			trimmed[key] = true
			if err := w.trimStream(ctx, rt, key, seen); err != nil {
				errs = append(errs, fmt.Errorf("trim %s: %w", key, err))
			}
		}
		if err := iter.Err(); err != nil {
			errs = append(errs, fmt.Errorf("scan %s: %w", rt.pattern(), err))
		}
	}
	if len(errs) == 0 {
		w.forgetGroupsGone(seen)
	}
	return errors.Join(errs...)
}

// knownType reports whether the registry has the event type typ: only
// those reach a stream.
func (w *Writer) knownType(typ string) bool {
	_, err := w.reg.Message(typ)
	return err == nil
}

// forgetGroupsGone deletes the lag and pending series of the groups (or
// streams) that the last pass saw and this one, seen, did not: they were
// deleted.
func (w *Writer) forgetGroupsGone(seen map[groupSeries]bool) {
	w.gaugedMu.Lock()
	defer w.gaugedMu.Unlock()
	for s := range w.gauged {
		if !seen[s] {
			w.metrics.lag.DeleteLabelValues(s.stream, s.group)
			w.metrics.pending.DeleteLabelValues(s.stream, s.group)
		}
	}
	w.gauged = seen
}

// trimLimit is how many entries one trim script deletes at most, so that a
// stream far over its retention does not block Redis for long; the pass
// calls it again until it is done.
const trimLimit = 1000

// trimStream trims one stream of rt, and adds the series of its groups to
// seen.
func (w *Writer) trimStream(ctx context.Context, rt *Route, key string, seen map[groupSeries]bool) error {
	// Where other routes can write the stream too, it keeps what each of
	// them would keep, and is lossy only if they all are.
	lossy := rt.Lossy
	var retentions []any // maxlen and maxage of each
	for i := range w.routes {
		if o := &w.routes[i]; o == rt || o.builds(key, w.knownType) {
			maxAge := o.MaxAge.Milliseconds()
			if o.MaxAge > 0 {
				maxAge = max(maxAge, 1)
			}
			retentions = append(retentions, o.MaxLen, maxAge)
			lossy = lossy && o.Lossy
		}
	}
	args := append([]any{lossy, trimLimit}, retentions...)
	for {
		res, err := trimScript.Run(ctx, w.rdb, []string{key}, args...).Slice()
		if err != nil {
			return err
		}
		trimmed, _ := res[0].(int64)
		more, _ := res[1].(int64)
		w.metrics.trimmed.Add(float64(trimmed))
		groups, _ := res[2].([]any)
		for _, g := range groups {
			g, _ := g.([]any)
			if len(g) != 3 {
				continue
			}
			name, _ := g[0].(string)
			lag, _ := g[1].(int64)
			pending, _ := g[2].(int64)
			if lag < 0 {
				w.metrics.lag.DeleteLabelValues(key, name) // Redis cannot tell the lag now
			} else {
				w.metrics.lag.WithLabelValues(key, name).Set(float64(lag))
			}
			w.metrics.pending.WithLabelValues(key, name).Set(float64(pending))
			seen[groupSeries{key, name}] = true
		}
		if more == 0 || ctx.Err() != nil {
			return nil
		}
	}
}

// trimScript trims a stream, atomically, to its retention, but unless the
// stream is lossy never past the oldest entry that a consumer group on it
// still needs: the first after the last one delivered to the group, or the
// oldest the group read and has not acknowledged. Being one script, no
// group can be created, moved back or read from between the check and the
// trim.
//
// KEYS[1] is the stream. ARGV: lossy (1 or 0), the most entries to delete,
// then the retention of each route that can write the stream: maxlen (0:
// none) and maxage in milliseconds of Redis's clock (0: none). An entry
// goes only if every route would delete it. It returns the entries
// deleted, 1 if it stopped at that limit (0 if not), and each group's
// name, lag (-1: unknown) and pending count.
var trimScript = redis.NewScript(`
local key = KEYS[1]
local lossy, limit = ARGV[1] == '1', tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then
	return {0, 0, {}}
end

-- Stream ids compared exactly, as decimal strings without leading zeros.
local function cmpnum(a, b)
	if #a ~= #b then return #a < #b and -1 or 1 end
	if a == b then return 0 end
	return a < b and -1 or 1
end
local function split(id)
	local ms, seq = string.match(id, '^(%d+)-(%d+)$')
	return ms, seq
end
local function less(x, y)
	local xm, xs = split(x)
	local ym, ys = split(y)
	local c = cmpnum(xm, ym)
	if c ~= 0 then return c < 0 end
	return cmpnum(xs, ys) < 0
end
local function incr(n) -- n + 1, in decimal
	local i = #n
	while i > 0 and string.sub(n, i, i) == '9' do i = i - 1 end
	if i == 0 then return '1' .. string.rep('0', #n) end
	return string.sub(n, 1, i - 1) .. string.char(string.byte(n, i) + 1) .. string.rep('0', #n - i)
end
local function after(id) -- the smallest id after id
	local ms, seq = split(id)
	if seq == '18446744073709551615' then return incr(ms) .. '-0' end
	return ms .. '-' .. incr(seq)
end

-- The cut of one route's retention: entries below it go (nil: none).
-- more: the limit stopped it short.
local len = redis.call('XLEN', key)
local function routeCut(maxlen, maxage)
	local cut, more = nil, false
	if maxlen > 0 and len > maxlen then
		local n = math.min(len - maxlen, limit)
		local e = redis.call('XRANGE', key, '-', '+', 'COUNT', n + 1)
		cut, more = e[#e][1], len - maxlen > limit
	end
	if maxage > 0 then
		local t = redis.call('TIME')
		local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - maxage
		if ms > 0 then
			local agecut = string.format('%.0f', ms) .. '-0'
			if cut == nil or less(cut, agecut) then
				local e = redis.call('XRANGE', key, '-', '(' .. agecut, 'COUNT', limit + 1)
				if #e > limit then
					cut, more = e[#e][1], true
				elseif #e > 0 then
					cut, more = agecut, false
				end
			end
		end
	end
	return cut, more
end

-- The stream keeps what any route keeps: the lowest cut of them all.
local cut, more = nil, false
for i = 3, #ARGV, 2 do
	local c, m = routeCut(tonumber(ARGV[i]), tonumber(ARGV[i + 1]))
	if c == nil then
		cut, more = nil, false
		break
	end
	if cut == nil or less(c, cut) then
		cut, more = c, m
	elseif not less(cut, c) then -- the same cut
		more = more and m
	end
end

local groups = {}
local safe = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
	local f = {}
	for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
	local need = after(f['last-delivered-id'])
	if f['pending'] > 0 then
		local p = redis.call('XPENDING', key, f['name'])
		if p[2] and less(p[2], need) then need = p[2] end
	end
	if safe == nil or less(need, safe) then safe = need end
	table.insert(groups, {f['name'], f['lag'] or -1, f['pending']})
end

local trimmed = 0
if cut then
	if not lossy and safe and less(safe, cut) then
		cut, more = safe, false
	end
	trimmed = redis.call('XTRIM', key, 'MINID', cut)
end
return {trimmed, more and 1 or 0, groups}
`)
