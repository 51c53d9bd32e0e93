#!/bin/sh
# Inside an image build: trust every PEM file ending in .crt found in the CA drop-in directory
# (certs/ in the repository) and print the CA bundle path pip should use. POSIX sh on purpose:
# it runs in the Debian base and in python:3.11-slim alike.
set -eu
dropin="${1:-/usr/local/share/ca-certificates/edgebed}"
found=0
for f in "$dropin"/*.crt; do
    [ -f "$f" ] && found=1
done
# Everything else copied along with the drop-in (README, .gitignore) is not a certificate.
find "$dropin" -type f ! -name '*.crt' -delete 2>/dev/null || true
if [ "$found" = 1 ] && command -v update-ca-certificates >/dev/null 2>&1; then
    update-ca-certificates >/dev/null 2>&1
fi
echo "CA drop-in: $( [ "$found" = 1 ] && echo "$(ls "$dropin"/*.crt | wc -l) file(s) trusted" || echo none)" >&2
