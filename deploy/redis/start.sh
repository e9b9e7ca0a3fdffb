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
#
# proto-max-bulk-len: no value hiscrm writes is near 8 MB (a message is at most 4 MB);
# Redis' default of 512 MB lets one worker's user write values that cost every reader
# that much memory.
exec redis-server --dir /data --aclfile /data/users.acl --appendonly yes \
    --proto-max-bulk-len 8mb --bind 0.0.0.0 --port 6379 "$@"
