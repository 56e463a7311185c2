#!/bin/sh
# Debian's PostgreSQL 15 in the fapiao-postgres image: a cluster is made on first start in PGDATA with
# the role POSTGRES_USER (password POSTGRES_PASSWORD, scram-sha-256) owning the database POSTGRES_DB.
#   PGHOST (listen address, default *), PGPORT (5432), PGDATA (/var/lib/postgresql/data/pgdata)
set -eu
bin=/usr/lib/postgresql/15/bin
data="${PGDATA:-/var/lib/postgresql/data/pgdata}"
listen="${PGHOST:-*}"
port="${PGPORT:-5432}"
: "${POSTGRES_USER:?set POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" "${POSTGRES_DB:?set POSTGRES_DB}"
case "$POSTGRES_USER$POSTGRES_DB" in *[!a-z0-9_]*) echo "POSTGRES_USER and POSTGRES_DB: a-z, 0-9, _ only" >&2; exit 2 ;; esac
if [ ! -s "$data/PG_VERSION" ]; then
	mkdir -p "$data"
	chmod 0700 "$data"
	pwfile="$(mktemp)"
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	"$bin/initdb" --pgdata="$data" --username="$POSTGRES_USER" --pwfile="$pwfile" --auth=scram-sha-256 \
		--encoding=UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	# Only the network this server listens on, with the password.
	printf 'local all all scram-sha-256\nhost all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
		>"$data/pg_hba.conf"
	"$bin/postgres" --single -D "$data" postgres >/dev/null <<SQL
CREATE DATABASE $POSTGRES_DB OWNER $POSTGRES_USER;
SQL
fi
exec "$bin/postgres" -D "$data" -c listen_addresses="$listen" -c port="$port" \
	-c unix_socket_directories=/tmp -c max_connections=300 -c shared_buffers=64MB
