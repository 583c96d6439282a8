#!/bin/bash
# rootfs.sh ROOT PATH...: make ROOT a root filesystem for a `FROM scratch` image that runs PATH...
#
# Run in a build stage (any Debian bookworm image: the files are copied from it). ROOT gets:
# - each PATH as it is (file, symlink and what it points to, or whole directory), under the same
#   path, so a virtualenv or an interpreter works where it was made;
# - every shared library the ELF files among them load (ldd), with the dynamic loader and an
#   ld.so.cache; a library that cannot be found fails the build;
# - /etc/passwd and /etc/group with root, nobody (65534) and nonroot (65532, home /home/nonroot),
#   nsswitch.conf (hosts: files, then DNS), /tmp, os-release;
# - for the Debian packages those files come from: their dpkg records in /var/lib/dpkg/status.d
#   (as distroless images have them, so SBOM and vulnerability scanners see glibc, OpenSSL,
#   Python...) and their copyright files.
# No shell, package manager or coreutils: nothing but what the image runs.
set -euo pipefail
root=$(realpath -m "$1")
shift
mkdir -p "$root"
cd / # cp --parents stumbles on some working directories

# Merged /usr (bookworm): /bin, /lib... are symlinks into /usr; keep them so, so that paths
# compiled into binaries (/lib64/ld-linux-x86-64.so.2) resolve.
for dir in bin sbin lib lib64; do
    if [ -L "/$dir" ]; then
        cp -a "/$dir" "$root/$dir"
        mkdir -p "$root/usr/$dir"
    fi
done

# PATH under its real directory (/lib/x/libc.so.6 lands in /usr/lib/x), and what a symlink names.
add() {
    local path=$1 dir
    dir=$(realpath "$(dirname "$path")")
    cp -a --parents "$dir/$(basename "$path")" "$root"
    if [ -L "$path" ]; then
        add "$(realpath "$path")"
    fi
}

for path in "$@"; do
    add "$path"
done

# The shared libraries of every ELF file copied (ldd lists the whole closure of each).
elf=$(printf '\177ELF')
libs=$(
    find "$root" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0 |
        while IFS= read -r -d '' file; do
            [ "$(head -c 4 "$file")" = "$elf" ] || continue
            out=$(ldd "${file#"$root"}" 2>&1) || continue # static, or not for this loader
            if grep -q 'not found' <<<"$out"; then
                echo "rootfs.sh: ${file#"$root"} needs a library that is not installed:" >&2
                grep 'not found' <<<"$out" >&2
                exit 1
            fi
            awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out"
        done | sort -u
)
for lib in $libs; do
    add "$lib"
done
# glibc loads libgcc_s itself when a thread exits or is cancelled (pthread_exit unwinds).
gcc_s=$(ldconfig -p | awk '$1 == "libgcc_s.so.1" && !found {print $NF; found = 1}')
[ -z "$gcc_s" ] || add "$gcc_s"

[ ! -e /etc/os-release ] || add /etc/os-release
# /usr/local/lib (the public Python image's libpython) is not a default directory of the loader.
if [ -e /etc/ld.so.conf ]; then
    add /etc/ld.so.conf
    [ ! -d /etc/ld.so.conf.d ] || add /etc/ld.so.conf.d
fi

# The Debian packages whose files are in the root, found in dpkg's file lists (paths under /bin,
# /lib... count as under /usr: merged /usr).
if [ -d /var/lib/dpkg/info ]; then
    packages=$(
        find "$root" -mindepth 2 \( -type f -o -type l \) -printf '/%P\n' |
            awk 'NR == FNR {want[$0]; next}
                 FNR == 1 {package = FILENAME; sub(/.*\//, "", package); sub(/\.list$/, "", package)}
                 {path = $0; if (path ~ /^\/(bin|sbin|lib[^\/]*)\//) path = "/usr" path}
                 path in want {print package}' - /var/lib/dpkg/info/*.list | sort -u
    )
    # The CA bundle is made by ca-certificates' script, so no package lists it.
    if [ -e "$root/etc/ssl/certs/ca-certificates.crt" ] && dpkg-query -s ca-certificates >/dev/null 2>&1; then
        packages="$packages ca-certificates"
    fi
    mkdir -p "$root/var/lib/dpkg/status.d"
    for package in $packages; do
        name=${package%%:*}
        dpkg-query -s "$package" >"$root/var/lib/dpkg/status.d/$name"
        copyright=/usr/share/doc/$name/copyright
        if [ -e "$copyright" ]; then
            mkdir -p "$root/usr/share/doc/$name"
            cp -L "$copyright" "$root/usr/share/doc/$name/copyright"
        fi
    done
fi

mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
chmod 700 "$root/home/nonroot"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
ldconfig -r "$root"

