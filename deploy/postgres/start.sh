#!/bin/sh
# Start PostgreSQL on the volume (/var/lib/postgresql/data), listening on the container
# network; the first start makes the cluster, the role hiscrm and its database hiscrm.
#
# The role's password is the secret database-password (made by `deploy/stack.py init`):
# psql reads it from the file itself (\set with backticks), so it is on no command line
# and in no environment, and no error message quotes the statement that holds it; the
# server keeps only its SCRAM hash. The superuser postgres has no password: only the
# socket inside this container reaches it (pg_hba.conf). The cluster is made under a
# temporary name and renamed when complete: an interrupted first start is done again.
set -eu
umask 077
PASSWORD_FILE=/run/secrets/database-password
HBA=/etc/hiscrm-postgres/pg_hba.conf
SOCKETS=/run/postgresql

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ ! -s "$PASSWORD_FILE" ]; then
        echo "hiscrm-postgres: no password in $PASSWORD_FILE (the secret database-password)" >&2
        exit 1
    fi
    new="$PGDATA.init"
    rm -rf "$new"
    initdb --pgdata="$new" --username=postgres --auth-local=peer --auth-host=reject \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    # a server only this script reaches (no TCP), for the role and the database; its
    # log goes to the container's, as the real one's
    pg_ctl --pgdata="$new" --wait --silent start --options="-c listen_addresses='' \
        -c unix_socket_directories=$SOCKETS -c hba_file=$HBA" >&2
    psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --host="$SOCKETS" --username=postgres \
        --dbname=postgres <<SQL
\\set VERBOSITY terse
SET log_min_error_statement = panic;
\\set password \`cat $PASSWORD_FILE\`
CREATE ROLE hiscrm LOGIN PASSWORD :'password';
\\unset password
CREATE DATABASE hiscrm OWNER hiscrm;
SQL
    pg_ctl --pgdata="$new" --wait --silent --mode=fast stop
    mv "$new" "$PGDATA"
    echo "hiscrm-postgres: made the cluster, the role hiscrm and the database hiscrm"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c port=5432 \
    -c unix_socket_directories="$SOCKETS" -c hba_file="$HBA" "$@"
