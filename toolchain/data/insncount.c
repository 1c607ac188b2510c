/*
 * insncount: a QEMU TCG plugin that counts the guest instructions a program executes.
 *
 *   cc -shared -fPIC -O2 -o insncount.so insncount.c
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./insncount.so,out=COUNT_FILE PROGRAM ARGS...
 *
 * At exit it writes the total as one decimal line to COUNT_FILE (or to qemu's log, stderr, without out=).
 * Each translated block adds its instruction count when it starts to execute, with an atomic add, so the
 * total is exact for blocks that run to their end (a block cut short by a fault or a signal still counts
 * whole: rare, and the same in every run). Used by cbnet_tl/toolchain/arm64_cost.py.
 *
 * Debian's qemu-user ships no qemu-plugin.h, so the few parts of QEMU's plugin API used here are declared
 * below, as QEMU 7.2 defines them (API version 1).
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t; /* not read */

enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                                 enum qemu_plugin_cb_flags flags, void *userdata);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
extern void qemu_plugin_outs(const char *string);

EXPORT int qemu_plugin_version = 1;

static uint64_t total;
static char out_path[4096];

static void block_executed(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    __atomic_fetch_add(&total, (uint64_t)(uintptr_t)userdata, __ATOMIC_RELAXED);
}

static void block_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_executed, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    char line[64];
    snprintf(line, sizeof line, "%" PRIu64 "\n", __atomic_load_n(&total, __ATOMIC_RELAXED));
    if (out_path[0]) {
        FILE *file = fopen(out_path, "w");
        if (file) {
            fputs(line, file);
            fclose(file);
            return;
        }
    }
    qemu_plugin_outs("insncount: ");
    qemu_plugin_outs(line);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof out_path) {
            strcpy(out_path, argv[i] + 4);
        } else {
            qemu_plugin_outs("insncount: unknown argument (expected out=PATH)\n");
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, block_translated);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
