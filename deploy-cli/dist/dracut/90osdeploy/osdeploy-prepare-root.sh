#!/bin/sh
# dracut pre-pivot hook (initramfs without systemd): makes the slot named by osdeploy.slot= the
# root filesystem once the sysroot's filesystem is mounted at $NEWROOT. Sourced by dracut's init:
# no exit. A slot that cannot be booted reboots the machine so that the bootloader falls back.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if [ -n "$(getarg osdeploy.slot=)" ]; then
    if ! osdeploy prepare-root --root "${NEWROOT:-/sysroot}"; then
        warn "osdeploy: this slot cannot be the root filesystem; rebooting so that the bootloader falls back"
        sleep 5
        reboot -f
    fi
fi
