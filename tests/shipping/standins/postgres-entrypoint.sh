#!/bin/sh
# What the official postgres image does with POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB.
set -eu
PGDATA=/var/lib/postgresql/data
BIN=/usr/lib/postgresql/15/bin
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
    chown postgres /tmp/pwfile
    su postgres -s /bin/sh -c "$BIN/initdb -D $PGDATA --encoding=UTF8 --locale=C.UTF-8 -U $POSTGRES_USER --pwfile=/tmp/pwfile --auth-host=scram-sha-256 --auth-local=trust" >/dev/null
    rm /tmp/pwfile
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    su postgres -s /bin/sh -c "$BIN/postgres -D $PGDATA -c listen_addresses='' " &
    until su postgres -s /bin/sh -c "$BIN/pg_isready -q -h /run/postgresql -p 5432 -U $POSTGRES_USER -d postgres"; do sleep 0.2; done
    su postgres -s /bin/sh -c "$BIN/psql -q -h /run/postgresql -p 5432 -U $POSTGRES_USER -d postgres -c 'CREATE DATABASE \"$POSTGRES_DB\"'"
    su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGDATA -m fast -w stop" >/dev/null
fi
exec su postgres -s /bin/sh -c "exec $BIN/postgres -D $PGDATA -c listen_addresses='*'"
