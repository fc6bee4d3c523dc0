/* bench/blk's in-guest load: sequential 1 MiB O_DIRECT writes and reads, then 4 KiB O_DIRECT
 * random reads, on one block device; prints a marker line after the writes and key=value lines
 * at the end. Built static by bench/blk. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: blkbench DEVICE MIB RANDOM_READS\n");
		return 2;
	}
	long mib = atol(argv[2]), nrand = atol(argv[3]);
	int fd = open(argv[1], O_RDWR | O_DIRECT);
	if (fd < 0) { perror("open"); return 1; }
	void *buf;
	if (posix_memalign(&buf, 4096, 1 << 20)) return 1;
	memset(buf, 0x5a, 1 << 20);
	double t = now();
	for (long i = 0; i < mib; i++)
		if (pwrite(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20) { perror("pwrite"); return 1; }
	if (fdatasync(fd)) { perror("fdatasync"); return 1; }
	double w = now() - t;
	/* Untimed marker: bench/blk samples the VMM's CPU time per phase here. */
	printf("blkbench: written\n");
	fflush(stdout);
	t = now();
	for (long i = 0; i < mib; i++)
		if (pread(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20) { perror("pread"); return 1; }
	double r = now() - t;
	unsigned long x = 88172645463325252UL;
	long blocks = (mib << 20) / 4096;
	t = now();
	for (long i = 0; i < nrand; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		if (pread(fd, buf, 4096, (off_t)(x % blocks) * 4096) != 4096) { perror("pread4k"); return 1; }
	}
	double q = now() - t;
	printf("seq_write_mbs=%.1f\nseq_read_mbs=%.1f\nrand_read_iops=%.0f\n",
	       mib / w, mib / r, nrand / q);
	return 0;
}
