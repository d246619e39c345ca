#!/bin/bash
# Create the RabbitMQ vhost and user of an fsclone site, and the user's credentials file.
#
#   deploy/rabbitmq/init.sh USERNAME [CREDENTIALS_FILE]
#
# Run where rabbitmqctl can reach the broker node (as root or rabbitmq on the broker host).
# After loading deploy/rabbitmq/definitions.json (same names), it sets the user's password.
# The vhost is named after the user (the SDSC convention; FSCLONE_VHOST overrides it). The user
# may only touch fsclone's own names in it. A new random password is written, mode 0600, to
# CREDENTIALS_FILE (default ~/.fsclone/rabbitmq_USERNAME.conf, where fsclone looks for it); copy
# that file to the same place on every worker and coordinator host (or set PASSWORD_FILE).
# Running it again keeps an existing user and file; delete the file to get a new password.
# The password never appears on a command line: rabbitmqctl reads it from its standard input.
set -euo pipefail

user=${1:?usage: $0 USERNAME [CREDENTIALS_FILE]}
file=${2:-$HOME/.fsclone/rabbitmq_${user}.conf}
vhost=${FSCLONE_VHOST:-$user}
ctl=(${RABBITMQCTL:-rabbitmqctl})   # e.g. RABBITMQCTL="rabbitmqctl -n rabbit@broker1"

if [[ ! $user =~ ^[A-Za-z0-9_.-]+$ ]]; then
    echo "$0: USERNAME may hold only letters, digits, '.', '_' and '-'" >&2
    exit 2
fi

if ! "${ctl[@]}" -q list_vhosts name | grep -qxF -- "$vhost"; then
    "${ctl[@]}" -q add_vhost "$vhost"
fi

users=$("${ctl[@]}" -q list_users | cut -f1)
if [[ -s $file ]] && grep -qxF -- "$user" <<<"$users"; then
    echo "$0: user $user exists and $file is there: left as they are"
else
    umask 077
    mkdir -p "$(dirname "$file")"
    password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    if grep -qxF -- "$user" <<<"$users"; then
        "${ctl[@]}" -q change_password "$user" <<<"$password"
    else
        "${ctl[@]}" -q add_user "$user" <<<"$password"
    fi
    printf '%s\n' "$password" >"$file.tmp"
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
    echo "$0: password of $user written to $file (mode 0600)"
fi

# Queues fsclone.<pass>.{chunks,results,dead} and fsclone.target.<hash>, the fsclone.control
# exchange, the workers' server-named control queues (amq.gen-*), the default exchange.
# The same permissions as in definitions.json.
names='^(fsclone\..*|amq\.gen-.*)$'
"${ctl[@]}" -q set_permissions -p "$vhost" "$user" "$names" '^(fsclone\..*|amq\.gen-.*|amq\.default)$' "$names"
# The node's AMQP listener, for the URL to give the nodes (amqps:// when it only has TLS).
listeners=$("${ctl[@]}" -q status --formatter json | grep -o '"port":[0-9]*,"protocol":"amqp[^"]*"' || true)
scheme=amqp port=5672
if grep -q '"amqp"' <<<"$listeners"; then
    port=$(grep '"amqp"' <<<"$listeners" | head -1 | grep -o '[0-9][0-9]*')
elif [[ -n $listeners ]]; then
    scheme=amqps port=$(head -1 <<<"$listeners" | grep -o '[0-9][0-9]*')
fi
echo "$0: $user may use fsclone's queues on vhost $vhost: $scheme://$user@$(hostname -f):$port/$vhost"
