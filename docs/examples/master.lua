-- /etc/discluster/master.lua: discluster-master's configuration (Lua 5.4,
-- run in a sandbox; see README "The config file"). Command-line flags
-- override what is set here. Secrets come from the environment: with the
-- systemd unit, from /etc/discluster/master.env (see master.env).

-- Where CONTROLs connect. Anything but loopback needs the shared secret
-- (auth below); put a TLS terminator in front for untrusted networks.
listen = "0.0.0.0:8642"

-- "auto" asks Discord for the recommended count (needs the token); or a
-- fixed count, e.g. shards = 16.
shards = "auto"

-- Collect CONTROLs this long before the first allocation, or until this
-- many machines joined.
collect_window = 45
expected_machines = 4

heartbeat_interval = 30
heartbeat_grace = 15
reconnect_grace = 30

identify_interval = 5.5  -- Discord's 5 s plus a margin for the grant's trip
identify_reserve = 10    -- session starts of the daily budget never granted

-- policy = "my-policy.lua"  -- relative to this file's directory
-- policy_timeout = 1        -- seconds a policy call may run (more for big fleets)

-- One JSON object per line: journald keeps them, a log shipper parses them.
log_format = "json"
log_level = "info"

token = os.getenv("DISCORD_TOKEN")
auth = os.getenv("DISCLUSTER_AUTH")
