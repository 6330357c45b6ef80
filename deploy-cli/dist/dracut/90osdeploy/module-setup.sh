#!/bin/bash
# dracut module: makes the slot named by osdeploy.slot= on the kernel command line the root
# filesystem (`osdeploy prepare-root`), once the sysroot's filesystem (root=) is mounted at
# /sysroot. With systemd in the initramfs this is a unit ordered before initrd-root-fs.target (so
# the slot's /etc/fstab is the one read next); without it, a pre-pivot hook. A slot that cannot
# be booted reboots the machine, and the bootloader, which counted this boot, falls back.
# Installed as /usr/lib/dracut/modules.d/90osdeploy/.

# Included whenever osdeploy is installed: a node without it in its initramfs cannot boot a slot.
check() {
    require_binaries osdeploy || return 1
    return 0
}

depends() {
    return 0
}

install() {
    inst_binary osdeploy
    # prepare-root resolves LABEL=/UUID= data partitions with blkid when udev has no link yet.
    inst_multiple -o blkid
    if dracut_module_included "systemd"; then
        inst_simple "$moddir/osdeploy-prepare-root.service" "$systemdsystemunitdir/osdeploy-prepare-root.service"
        $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target osdeploy-prepare-root.service
    else
        inst_hook pre-pivot 50 "$moddir/osdeploy-prepare-root.sh"
    fi
}
