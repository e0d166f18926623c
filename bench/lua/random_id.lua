-- BENCH_PATH with "{id}" replaced, per request, by a random line of BENCH_IDS_FILE.
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids = {}
local threads_created = 0

function setup(thread)
   threads_created = threads_created + 1
   thread:set("thread_number", threads_created)
end

function init(args)
   common.configure()
   for line in common.read_file(os.getenv("BENCH_IDS_FILE")):gmatch("[^\n]+") do
      ids[#ids + 1] = line
   end
   assert(#ids > 0, "BENCH_IDS_FILE has no ids")
   math.randomseed(os.time() * 100 + (rawget(_G, "thread_number") or 0))
end

function request()
   local path = wrk.path:gsub("{id}", ids[math.random(#ids)])
   return wrk.format(nil, path)
end

done = common.done
