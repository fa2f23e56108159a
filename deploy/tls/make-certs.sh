#!/usr/bin/env bash
# Certificates for a dsv2-serve cluster, made with openssl: a cluster CA, one
# certificate per process whose identity (a URI subject alternative name
# spiffe://dsv2/ROLE/ID) names its role and id, revocation, and API tokens.
#
#   make-certs.sh DIR ca                  the CA (DIR/ca.pem, DIR/ca.key) and an empty
#                                         revocation list in DIR/crl/ (no-op if it exists)
#   make-certs.sh DIR cert ROLE ID [SAN]  DIR/ID.pem and DIR/ID.key for ROLE (controller,
#                                         router, attention, expert, operator); SAN is the
#                                         host names and addresses it serves at, as openssl
#                                         writes them (default "DNS:localhost,IP:127.0.0.1")
#   make-certs.sh DIR revoke ID           revokes DIR/ID.pem and rewrites DIR/crl/
#   make-certs.sh DIR token NAME          appends `NAME <random token>` to DIR/api-tokens
#                                         and prints the token
#
# Environment: DAYS (validity of certificates, default 30; the CA: CA_DAYS, 3650);
# ENDDATE (YYYYMMDDHHMMSSZ) instead of DAYS, e.g. to make an expired one for tests.
# Keys are ECDSA P-256, readable only by their owner.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
dir="$1" command="$2"
shift 2
days="${DAYS:-30}"
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
umask 077

# openssl ca keeps its database in DIR/.ca (serials, issued and revoked).
config="$dir/.ca/openssl.cnf"
write_config() {
  mkdir -p "$dir/.ca" "$dir/crl"
  [ -f "$dir/.ca/index.txt" ] || : >"$dir/.ca/index.txt"
  [ -f "$dir/.ca/serial" ] || openssl rand -hex 16 >"$dir/.ca/serial"
  [ -f "$dir/.ca/crlnumber" ] || echo 1000 >"$dir/.ca/crlnumber"
  cat >"$config" <<CONF
[ ca ]
default_ca = dsv2
[ dsv2 ]
dir = $dir/.ca
database = \$dir/index.txt
serial = \$dir/serial
crlnumber = \$dir/crlnumber
new_certs_dir = \$dir
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 30
policy = anything
unique_subject = no
copy_extensions = none
[ anything ]
commonName = supplied
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = \${ENV::DSV2_SAN}
CONF
}

write_crl() {
  DSV2_SAN=URI:unused openssl ca -config "$config" -gencrl -out "$dir/crl/crl.pem" 2>/dev/null
  # Hashed names (HASH.r0), where OpenSSL (and gRPC's --tls_crl_dir) look.
  find "$dir/crl" -type l -delete
  ln -s crl.pem "$dir/crl/$(openssl crl -in "$dir/crl/crl.pem" -noout -hash).r0"
}

case "$command" in
  ca)
    if [ ! -f "$dir/ca.pem" ]; then
      openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "${CA_DAYS:-3650}" \
        -subj "/CN=dsv2 cluster CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
      chmod 644 "$dir/ca.pem"
      write_config
      write_crl
      echo "make-certs.sh: CA $dir/ca.pem"
    fi
    ;;
  cert)
    [ $# -ge 2 ] || usage
    role="$1" id="$2" san="${3:-DNS:localhost,IP:127.0.0.1}"
    case "$role" in controller|router|attention|expert|operator) ;;
      *) echo "make-certs.sh: unknown role '$role'" >&2; exit 2 ;; esac
    [[ "$id" =~ ^[A-Za-z0-9._@:-]{1,128}$ ]] ||
      { echo "make-certs.sh: id '$id' must be 1-128 of [A-Za-z0-9._@:-]" >&2; exit 2; }
    [ -f "$dir/ca.pem" ] || { echo "make-certs.sh: no CA in $dir (run: $0 $dir ca)" >&2; exit 1; }
    write_config
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$dir/$id.key" -out "$dir/.ca/$id.csr" -subj "/CN=$id" 2>/dev/null
    DSV2_SAN="URI:spiffe://dsv2/$role/$id,$san" openssl ca -batch -config "$config" \
      -extensions leaf $([ -n "${ENDDATE:-}" ] && echo "-enddate $ENDDATE" || echo "-days $days") -notext -in "$dir/.ca/$id.csr" -out "$dir/$id.pem" 2>/dev/null
    chmod 644 "$dir/$id.pem"
    echo "make-certs.sh: $dir/$id.pem (spiffe://dsv2/$role/$id, $san)"
    ;;
  revoke)
    [ $# -ge 1 ] || usage
    write_config
    DSV2_SAN=URI:unused openssl ca -config "$config" -revoke "$dir/$1.pem" 2>/dev/null
    write_crl
    echo "make-certs.sh: revoked $dir/$1.pem; $dir/crl/ rewritten"
    ;;
  token)
    [ $# -ge 1 ] || usage
    token="$(openssl rand -hex 24)"
    echo "$1 $token" >>"$dir/api-tokens"
    echo "$token"
    ;;
  *) usage ;;
esac
