// SPDX-License-Identifier: Apache-2.0
/*
 * Batch sink for libbpf's ring_buffer__consume(): copies each record into one
 * of a few flat buffers by record size, so Python decodes a whole batch with
 * one struct.iter_unpack instead of running a callback per record.
 *
 * libbpf has already advanced the consumer position when it calls us, so a
 * record handed to us must be kept. We stop the drain (negative return) when
 * a buffer could not take one more record of its size; Python empties the
 * buffers and calls consume again.
 */
/* No libc headers: only the compiler is needed to build this. */
typedef __UINT8_TYPE__ uint8_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __SIZE_TYPE__ size_t;

#define SINK_MAX 4

struct sink_buf {
	uint8_t *data;
	uint64_t cap;      /* bytes */
	uint64_t len;      /* bytes used */
	uint64_t rec_size; /* every record in this buffer has this size */
};

struct sink {
	struct sink_buf bufs[SINK_MAX];
	uint64_t nbufs;
	uint64_t unknown;  /* records of a size no buffer takes: counted, dropped */
};

int bpfnfs_sink_cb(void *ctx, void *data, size_t size)
{
	struct sink *s = ctx;
	uint64_t i;
	int full = 0;

	for (i = 0; i < s->nbufs && i < SINK_MAX; i++) {
		struct sink_buf *b = &s->bufs[i];

		if (b->rec_size != size)
			continue;
		__builtin_memcpy(b->data + b->len, data, size);
		b->len += size;
		break;
	}
	if (i == s->nbufs || i == SINK_MAX)
		s->unknown++;
	for (i = 0; i < s->nbufs && i < SINK_MAX; i++)
		if (s->bufs[i].cap - s->bufs[i].len < s->bufs[i].rec_size)
			full = 1;
	return full ? -28 /* ENOSPC: stop here, nothing lost */ : 0;
}
