-- The same request every time: method, body and headers from the environment (common.lua).
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
   common.configure()
end

done = common.done
