#!/bin/sh
# Start redis-server with the fleet's users (the ACL file `hiscrm acl render` wrote,
# mounted as the secret redis-acl) and an append-only file, both under /data.
#
# The ACL file is copied into /data because Redis rewrites its aclfile on ACL SAVE
# (`hiscrm acl add-worker` saves a user it adds): the copy takes those saves, the
# rendered file stays the source the next start begins from.
set -eu
umask 077
cp /run/secrets/redis-acl /data/users.acl
exec redis-server --dir /data --aclfile /data/users.acl --appendonly yes \
    --bind 0.0.0.0 --port 6379 "$@"
