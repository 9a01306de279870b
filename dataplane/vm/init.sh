# The body of the VM's /init (build-initramfs.sh prepends the shebang and TEST_ARGS).
# Prints exactly one line starting with "IPVS-TEST " (PASS from the test, or FAIL from here)
# and powers the VM off.
/bin/busybox --install -s /bin
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
echo /sbin/modprobe >/proc/sys/kernel/modprobe
ip link set lo up

finish() {
    echo "$1"
    sync
    poweroff -f
    sleep 5
}

if ! modprobe ip_vs 2>/tmp/modprobe.err; then
    cat /tmp/modprobe.err
    finish "IPVS-TEST FAIL modprobe ip_vs: $(cat /tmp/modprobe.err)"
fi
echo "vm: ip_vs loaded: $(grep -c '^ip_vs' /proc/modules) ip_vs modules"

# shellcheck disable=SC2086
MESH_IPVS_VM_INNER=1 RUST_BACKTRACE=1 /mesh-test $TEST_ARGS >/tmp/test.out 2>&1
rc=$?
cat /tmp/test.out
if [ "$rc" -ne 0 ] || ! grep -q '^IPVS-TEST PASS' /tmp/test.out; then
    finish "IPVS-TEST FAIL test exited $rc"
fi
finish "vm: done"
