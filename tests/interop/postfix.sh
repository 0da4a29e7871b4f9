#!/usr/bin/env bash
# shellcheck disable=SC2015,SC2016  # "A && B || die" is meant; bash -c takes $0 literally
# A throwaway Postfix instance on 127.0.0.1 for smtplug's interop tests.
#
#   postfix.sh start DIR   install the packages if missing, (re)create the
#                          instance in DIR, start it, print its KEY=VALUE lines
#   postfix.sh stop DIR    stop the instance in DIR (nothing to do is fine)
#   postfix.sh env DIR     print the KEY=VALUE lines of the instance in DIR
#
# The instance is a separate Postfix configuration directory, DIR/etc, run
# with `postfix -c DIR/etc`: the machine's own /etc/postfix/main.cf and
# master.cf are neither used nor changed, and no default instance is needed
# (Debian's "No configuration" install has none). Root may name any
# configuration directory with -c; only the set-gid commands (sendmail,
# postdrop, postqueue) would need it in alternate_config_directories of the
# default main.cf, and the harness uses none of them: mail comes in over SMTP.
# Postfix still reads its package's file list from /etc/postfix
# (meta_directory). Everything else lives under DIR:
#
#   DIR/etc        main.cf, master.cf, regexp maps, sasl/smtpd.conf, sasldb2
#   DIR/tls        throwaway CA, server certificate (localhost, 127.0.0.1),
#                  client certificate signed by the same CA
#   DIR/spool      queue directory        DIR/data   data directory
#   DIR/Maildir    every accepted message (new/ and cur/)
#   DIR/log        postfix.log (maillog_file: there is no syslog here)
#
# Three smtpd services listen on 127.0.0.1 only (ports from the environment):
#
#   SMTPLUG_POSTFIX_PLAIN_PORT       (10025) STARTTLS offered, AUTH after TLS
#   SMTPLUG_POSTFIX_SUBMISSION_PORT  (10587) STARTTLS required, AUTH after TLS,
#                                    only authenticated clients may send
#   SMTPLUG_POSTFIX_SMTPS_PORT       (10465) implicit TLS, AUTH offered; asks
#                                    for (does not require) a client
#                                    certificate: the log says "Trusted TLS
#                                    connection" when one from the CA came
#
# Nothing is ever relayed: every domain is a virtual mailbox domain delivered
# into DIR/Maildir, and every transport that could leave the machine is
# error:. Recipients @refused.test get 550 5.1.1, @tempfail.test 450 4.2.0.
#
# Exit codes: 0 ok, 1 failure, 2 usage, 3 not root (callers skip on 3),
# 4 the packages could not be installed (callers skip on 4).
set -euo pipefail

readonly SASL_USER=alice
readonly SASL_PASSWORD=wonderland
readonly SASL_REALM=smtplug.test
readonly REFUSED_DOMAIN=refused.test
readonly TEMPFAIL_DOMAIN=tempfail.test
readonly MECH_LIST="PLAIN LOGIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-1 SCRAM-SHA-256"
readonly PACKAGES=(postfix sasl2-bin libsasl2-modules openssl)
readonly START_TIMEOUT=30
# The virtual delivery agent writes the Maildir as this account.
readonly MAIL_USER=nobody

die() {
    local code=$1
    shift
    echo "postfix.sh: $*" >&2
    exit "$code"
}

usage() {
    die 2 "usage: postfix.sh start|stop|env DIR"
}

need_root() {
    [ "$(id -u)" = 0 ] || die 3 "must run as root (installs Debian packages and runs a Postfix master); uid is $(id -u)"
}

packages_missing() {
    local pkg missing=()
    for pkg in "${PACKAGES[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$pkg")
        fi
    done
    echo "${missing[@]}"
}

install_packages() {
    local missing
    missing=$(packages_missing)
    [ -z "$missing" ] && return 0
    command -v apt-get >/dev/null || die 4 "packages missing ($missing) and there is no apt-get to install them"
    echo "postfix.sh: installing $missing" >&2
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
        || die 4 "debconf-set-selections failed"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    # (A lock timeout: test sessions side by side may all install at once.)
    local apt=(apt-get -y -qq -o DPkg::Lock::Timeout=300)
    # shellcheck disable=SC2086
    if ! "${apt[@]}" install --no-install-recommends $missing >"$WORK_LOG" 2>&1; then
        "${apt[@]}" update >>"$WORK_LOG" 2>&1 || true
        # shellcheck disable=SC2086
        "${apt[@]}" install --no-install-recommends $missing >>"$WORK_LOG" 2>&1 \
            || die 4 "apt-get install $missing failed (see $WORK_LOG): $(tail -n 3 "$WORK_LOG" | tr '\n' ' ')"
    fi
    missing=$(packages_missing)
    [ -z "$missing" ] || die 4 "still missing after apt-get install: $missing"
}

# The paths below DIR, set by set_paths.
set_paths() {
    DIR=$1
    case $DIR in
        /*) ;;
        *) DIR="$(pwd)/$DIR" ;;
    esac
    while [ "${DIR%/}" != "$DIR" ]; do DIR=${DIR%/}; done
    case $DIR in
        "" | /etc | /usr | /var | /root | /home | /tmp) die 2 "refusing to use $1 as the harness directory" ;;
        *[[:space:],]*) die 2 "the harness directory must not contain white space or commas: $DIR" ;;
    esac
    MARKER=$DIR/.smtplug-postfix-harness
    ETC=$DIR/etc
    TLS=$DIR/tls
    SPOOL=$DIR/spool
    DATA=$DIR/data
    MAILDIR=$DIR/Maildir
    LOGDIR=$DIR/log
    LOG=$LOGDIR/postfix.log
    ENV_FILE=$DIR/harness.env
    WORK_LOG=$DIR/harness.log
}

running() {
    [ -f "$ETC/main.cf" ] && command -v postfix >/dev/null \
        && postfix -c "$ETC" status >/dev/null 2>&1
}

# The PID of this instance's running master, or nothing.
master_pid() {
    local pid
    running || return 0
    pid=$(tr -dc 0-9 <"$SPOOL/pid/master.pid" 2>/dev/null) || return 0
    # Only a Postfix master counts (a stale PID file may name anything).
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = master ] && echo "$pid"
    return 0
}

do_stop() {
    local pid i
    pid=$(master_pid)
    [ -n "$pid" ] || return 0
    postfix -c "$ETC" stop >>"$WORK_LOG" 2>&1 || true
    # The master takes about a second to go; its ports are free only then.
    for i in $(seq 1 100); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = master ] || return 0
        [ "$i" = 50 ] && kill "$pid" 2>/dev/null
        sleep 0.1
    done
    die 1 "the Postfix master (PID $pid) of $DIR did not stop"
}

# True when something accepts connections on 127.0.0.1:$1.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_port() {
    local name=$1 port=$2
    [[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
        || die 1 "$name=$port is not a TCP port number"
    if port_busy "$port"; then
        die 1 "port $port ($name) on 127.0.0.1 is already in use; set $name to a free port"
    fi
}

# Every directory above DIR must be searchable by the unprivileged Postfix
# processes (smtpd reads the sasldb as postfix, virtual writes as nobody).
check_traversable() {
    local path=$DIR
    while [ "$path" != / ] && [ -n "$path" ]; do
        path=$(dirname "$path")
        if [ "$(( 0$(stat -c %a "$path") & 1 ))" = 0 ]; then
            die 1 "$path is not searchable by other users (mode $(stat -c %a "$path")); Postfix's unprivileged daemons could not reach $DIR: use a directory such as /tmp/NAME"
        fi
    done
}

make_certificates() {
    mkdir -p "$TLS"
    local days=5 subj="/O=smtplug test harness"
    (
        cd "$TLS"
        cat >ext.cnf <<'EOF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectAltName = email:alice@smtplug.test
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
        {
            printf '[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = ca\n\n'
            printf '[dn]\nO = smtplug test harness\nCN = smtplug throwaway CA %s\n\n' "$(date +%s)"
            sed -n '/^\[ca\]/,/^$/p' ext.cnf
        } >ca.cnf
        openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$days" \
            -config ca.cnf -keyout ca.key -out ca.pem 2>/dev/null
        local name cn
        for name in server client; do
            if [ $name = server ]; then cn=localhost; else cn=alice; fi
            openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "$subj/CN=$cn" \
                -keyout $name.key -out $name.csr 2>/dev/null
            openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days "$days" -sha256 -extfile ext.cnf -extensions $name -out $name.pem 2>/dev/null
            rm -f $name.csr
        done
        rm -f ca.srl ca.cnf ext.cnf
        chmod 0644 ./*.pem client.key
        chmod 0600 ca.key server.key
    ) >>"$WORK_LOG" 2>&1 || true
    # (set -e is off inside a subshell tested with ||: check the result instead.)
    openssl verify -x509_strict -purpose sslserver -CAfile "$TLS/ca.pem" "$TLS/server.pem" >>"$WORK_LOG" 2>&1 \
        && openssl verify -x509_strict -purpose sslclient -CAfile "$TLS/ca.pem" "$TLS/client.pem" >>"$WORK_LOG" 2>&1 \
        && [ -s "$TLS/server.key" ] && [ -s "$TLS/client.key" ] \
        || die 1 "creating the throwaway certificates failed (see $WORK_LOG)"
}

write_config() {
    mkdir -p "$ETC/sasl"
    cat >"$ETC/main.cf" <<EOF
# smtplug test harness instance: generated by tests/interop/postfix.sh
compatibility_level = 3.6
queue_directory = $SPOOL
data_directory = $DATA
myhostname = localhost
mydomain = $SASL_REALM
myorigin = \$myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtpd_banner = \$myhostname ESMTP smtplug test harness (Postfix)
smtpd_peername_lookup = no

# Never leave the machine: all that is not a virtual mailbox fails.
default_transport = error:5.7.1 the smtplug test harness delivers nothing off this machine
relay_transport = \$default_transport
local_transport = \$default_transport
fallback_transport =
relayhost =

# Every address is a virtual mailbox: one Maildir, owned by $MAIL_USER.
virtual_transport = virtual
virtual_mailbox_domains = regexp:$ETC/virtual_domains
virtual_mailbox_maps = regexp:$ETC/virtual_mailboxes
virtual_mailbox_base = $DIR
virtual_uid_maps = static:$MAIL_UID
virtual_gid_maps = static:$MAIL_GID
virtual_minimum_uid = 1

# Logging: no syslog in containers.
maillog_file = $LOG
maillog_file_prefixes = $LOGDIR

# Fast failures for tests.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_junk_command_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_auth_rate_limit = 0

# Restrictions: refusals by recipient domain; anything else is local.
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access regexp:$ETC/recipient_access

# TLS (STARTTLS offered; the services override).
smtpd_tls_chain_files = $TLS/server.key, $TLS/server.pem
smtpd_tls_CAfile = $TLS/ca.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes

# Cyrus SASL with a sasldb of its own.
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $ETC/sasl
smtpd_sasl_local_domain = $SASL_REALM
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sasl_authenticated_header = yes
EOF

    cat >"$ETC/master.cf" <<EOF
# smtplug test harness instance: generated by tests/interop/postfix.sh
# service      type  private unpriv chroot wakeup maxproc command
127.0.0.1:$PLAIN_PORT inet n - n - - smtpd
  -o syslog_name=postfix/plain
127.0.0.1:$SUBMISSION_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
127.0.0.1:$SMTPS_PORT inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_ask_ccert=yes
pickup     unix  n - n 60   1 pickup
cleanup    unix  n - n -    0 cleanup
qmgr       unix  n - n 300  1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -    - trivial-rewrite
bounce     unix  - - n -    0 bounce
defer      unix  - - n -    0 bounce
trace      unix  - - n -    0 bounce
verify     unix  - - n -    1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -    - proxymap
proxywrite unix  - - n -    1 proxymap
showq      unix  n - n -    - showq
error      unix  - - n -    - error
retry      unix  - - n -    - error
discard    unix  - - n -    - discard
virtual    unix  - n n -    - virtual
anvil      unix  - - n -    1 anvil
scache     unix  - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF

    printf '/./ OK\n' >"$ETC/virtual_domains"
    printf '/./ Maildir/\n' >"$ETC/virtual_mailboxes"
    cat >"$ETC/recipient_access" <<EOF
/@${REFUSED_DOMAIN//./\\.}\$/ 550 5.1.1 Recipient address rejected by the smtplug test harness
/@${TEMPFAIL_DOMAIN//./\\.}\$/ 450 4.2.0 Recipient address temporarily rejected by the smtplug test harness
EOF

    cat >"$ETC/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $ETC/sasldb2
mech_list: $MECH_LIST
log_level: 3
EOF
    rm -f "$ETC/sasldb2"
    printf '%s' "$SASL_PASSWORD" | saslpasswd2 -p -c -f "$ETC/sasldb2" -u "$SASL_REALM" "$SASL_USER" \
        || die 1 "saslpasswd2 failed"
    chown root:postfix "$ETC/sasldb2"
    chmod 0640 "$ETC/sasldb2"
}

write_env() {
    cat >"$ENV_FILE.tmp" <<EOF
POSTFIX_HOST=127.0.0.1
POSTFIX_PLAIN_PORT=$PLAIN_PORT
POSTFIX_SUBMISSION_PORT=$SUBMISSION_PORT
POSTFIX_SMTPS_PORT=$SMTPS_PORT
POSTFIX_CA=$TLS/ca.pem
POSTFIX_SERVER_CERT=$TLS/server.pem
POSTFIX_SERVER_KEY=$TLS/server.key
POSTFIX_CLIENT_CERT=$TLS/client.pem
POSTFIX_CLIENT_KEY=$TLS/client.key
POSTFIX_MAILDIR=$MAILDIR
POSTFIX_USER=$SASL_USER
POSTFIX_PASSWORD=$SASL_PASSWORD
POSTFIX_REALM=$SASL_REALM
POSTFIX_LOG=$LOG
POSTFIX_REFUSED_DOMAIN=$REFUSED_DOMAIN
POSTFIX_TEMPFAIL_DOMAIN=$TEMPFAIL_DOMAIN
POSTFIX_CONFIG_DIR=$ETC
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# Waits until 127.0.0.1:$1 greets with 220; $2 = tls for implicit TLS.
wait_banner() {
    local port=$1 mode=$2 deadline=$3 line
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if [ "$mode" = tls ]; then
            line=$(printf 'QUIT\r\n' | timeout 5 openssl s_client -quiet \
                -connect "127.0.0.1:$port" -servername localhost -CAfile "$TLS/ca.pem" \
                -verify_return_error 2>/dev/null | head -n 1) || true
        else
            line=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"; IFS= read -r -t 4 l <&3; printf "QUIT\r\n" >&3; echo "$l"' "$port" 2>/dev/null) || true
        fi
        case $line in
            220*) return 0 ;;
        esac
        sleep 0.1
    done
    die 1 "no 220 banner on 127.0.0.1:$port within ${START_TIMEOUT}s (log: $LOG): $(tail -n 5 "$LOG" 2>/dev/null | tr '\n' ' ')"
}

do_start() {
    install_packages
    do_stop
    PLAIN_PORT=${SMTPLUG_POSTFIX_PLAIN_PORT:-10025}
    SUBMISSION_PORT=${SMTPLUG_POSTFIX_SUBMISSION_PORT:-10587}
    SMTPS_PORT=${SMTPLUG_POSTFIX_SMTPS_PORT:-10465}
    check_port SMTPLUG_POSTFIX_PLAIN_PORT "$PLAIN_PORT"
    check_port SMTPLUG_POSTFIX_SUBMISSION_PORT "$SUBMISSION_PORT"
    check_port SMTPLUG_POSTFIX_SMTPS_PORT "$SMTPS_PORT"
    [ "$PLAIN_PORT" != "$SUBMISSION_PORT" ] && [ "$PLAIN_PORT" != "$SMTPS_PORT" ] \
        && [ "$SUBMISSION_PORT" != "$SMTPS_PORT" ] || die 1 "the three ports must differ"
    MAIL_UID=$(id -u "$MAIL_USER")
    MAIL_GID=$(id -g "$MAIL_USER")

    # A fresh instance every time: old queue, mail, log and keys go.
    rm -rf "$ETC" "$TLS" "$SPOOL" "$DATA" "$MAILDIR" "$LOGDIR" "$ENV_FILE"
    mkdir -p "$ETC" "$SPOOL" "$DATA" "$LOGDIR" "$MAILDIR"/{new,cur,tmp}
    chmod 0755 "$DIR" "$SPOOL" "$LOGDIR"
    chown postfix "$DATA"
    chown -R "$MAIL_UID:$MAIL_GID" "$MAILDIR"
    check_traversable

    make_certificates
    write_config
    # (postfix start runs postfix check itself: it creates the queue
    # directories, which is most of the two seconds a start takes.)
    postfix -c "$ETC" start >>"$WORK_LOG" 2>&1 \
        || die 1 "postfix start failed: $(tail -n 5 "$WORK_LOG" | tr '\n' ' ') $(tail -n 5 "$LOG" 2>/dev/null | tr '\n' ' ')"

    local deadline=$(( $(date +%s) + START_TIMEOUT ))
    wait_banner "$PLAIN_PORT" plain "$deadline"
    wait_banner "$SUBMISSION_PORT" plain "$deadline"
    wait_banner "$SMTPS_PORT" tls "$deadline"
    write_env
    cat "$ENV_FILE"
}

[ $# = 2 ] || usage
command=$1
set_paths "$2"
case $command in
    start)
        need_root
        mkdir -p "$DIR"
        # Start deletes and recreates etc/, spool/, Maildir/ ... in DIR: only
        # in a directory that is empty or was the harness's before.
        if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
            die 2 "$DIR is not empty and holds no harness instance; use a new or empty directory"
        fi
        echo "smtplug Postfix test harness instance (tests/interop/postfix.sh)" >"$MARKER"
        : >"$WORK_LOG"
        do_start
        ;;
    stop)
        need_root
        [ -e "$MARKER" ] || exit 0
        do_stop
        rm -f "$ENV_FILE"
        ;;
    env)
        [ -f "$ENV_FILE" ] || die 1 "no running harness in $DIR (run: postfix.sh start $DIR)"
        cat "$ENV_FILE"
        ;;
    *)
        usage
        ;;
esac
