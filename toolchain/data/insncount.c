/*
 * insncount: a QEMU TCG plugin that counts the guest instructions a program executes.
 *
 *   cc -shared -fPIC -O2 -o insncount.so insncount.c
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./insncount.so,out=COUNT_FILE PROGRAM ARGS...
 *
 * At exit it writes the total as one decimal line to COUNT_FILE (to qemu's log, `-d plugin`, without out=),
 * then one line per mark: the count when the program made the marking system call lseek(-1, MARK_OFFSET,
 * SEEK_SET) (it fails with EBADF and changes nothing; Python: os.lseek(-1, 0x4D41524B, 0)). The difference
 * between two marks is what the program ran between them, with nothing of its start-up.
 * Each translated block adds its instruction count when it starts to execute, with an atomic add, so the
 * total is exact for blocks that run to their end (a block cut short by a fault or a signal still counts
 * whole: rare, and the same in every run). Used by cbnet_tl/toolchain/arm64/cost.py.
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
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                                 enum qemu_plugin_cb_flags flags, void *userdata);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
extern void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
extern void qemu_plugin_outs(const char *string);

#define AARCH64_LSEEK 62
#define MARK_OFFSET 0x4D41524Bu /* "MARK" */
#define MAX_MARKS 256

EXPORT int qemu_plugin_version = 1;

static uint64_t total;
static uint64_t marks[MAX_MARKS];
static unsigned int num_marks; /* written under the lock below */
static int marks_lock;
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

static void syscall_made(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                         uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num != AARCH64_LSEEK || a1 != UINT64_MAX || a2 != MARK_OFFSET || a3 != 0) {
        return;
    }
    while (__atomic_exchange_n(&marks_lock, 1, __ATOMIC_ACQUIRE)) {
    }
    if (num_marks < MAX_MARKS) {
        marks[num_marks++] = __atomic_load_n(&total, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&marks_lock, 0, __ATOMIC_RELEASE);
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    char line[64];
    FILE *file = out_path[0] ? fopen(out_path, "w") : NULL;
    snprintf(line, sizeof line, "%" PRIu64 "\n", __atomic_load_n(&total, __ATOMIC_RELAXED));
    for (unsigned int i = 0; i <= num_marks; i++) {
        if (i > 0) {
            snprintf(line, sizeof line, "%" PRIu64 "\n", marks[i - 1]);
        }
        if (file) {
            fputs(line, file);
        } else {
            qemu_plugin_outs(line);
        }
    }
    if (file) {
        fclose(file);
    }
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
    qemu_plugin_register_vcpu_syscall_cb(id, syscall_made);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
