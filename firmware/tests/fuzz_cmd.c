/*
 * fuzz_cmd.c - randomized test of the firmware's command decoder.
 *
 * Built with -fsanitize=address,undefined by firmware/Makefile. For each trial
 * it feeds random, garbage-prefixed and mutated byte streams byte by byte and
 * checks that the decoder never reads out of bounds, never returns a command
 * that is not a CRC-valid frame present in the stream, and always returns an
 * intact command that follows garbage.
 *
 * Usage: fuzz_cmd [trials] [seed]
 */
#include "em_protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

/* Bytes that look like command headers, so garbage often starts false frames. */
static uint8_t rnd_byte(void)
{
    static const uint8_t tricky[] = {0xC3, 0x3C, 0x01, 0x08, 0x00, 0x02, 0x05, 0xFF};
    return (rnd() % 3 == 0) ? tricky[rnd() % sizeof(tricky)] : (uint8_t)rnd();
}

static size_t rnd_command(uint8_t *out, uint8_t *cmd, uint8_t *args, uint8_t *alen)
{
    uint8_t i;
    *cmd = (uint8_t)(1 + rnd() % 6);
    *alen = (uint8_t)(rnd() % (EM_CMD_MAX_ARG_BYTES + 1));
    for (i = 0; i < *alen; i++) {
        args[i] = rnd_byte();
    }
    return em_encode_command(out, EM_CMD_MAX_FRAME_BYTES, *cmd, args, *alen);
}

/* A returned command must be the CRC-valid frame made of the last bytes fed. */
static int returned_frame_is_real(const uint8_t *stream, size_t end, const em_command_t *c)
{
    uint8_t enc[EM_CMD_MAX_FRAME_BYTES];
    size_t n = em_encode_command(enc, sizeof(enc), c->cmd, c->args, c->arg_len);
    return n > 0 && end >= n && memcmp(stream + end - n, enc, n) == 0;
}

int main(int argc, char **argv)
{
    long trials = argc > 1 ? atol(argv[1]) : 200000;
    long t;
    long returned = 0, intact = 0, intact_found = 0, collisions = 0, bogus = 0;
    if (argc > 2) {
        g_rng ^= strtoull(argv[2], NULL, 0) * 0x2545F4914F6CDD1Dull;
    }
    for (t = 0; t < trials; t++) {
        uint8_t stream[256];
        size_t len = 0, i, cmd_start = 0, cmd_end = 0;
        uint8_t cmd = 0, args[EM_CMD_MAX_ARG_BYTES], alen = 0;
        int mode = (int)(t % 3);
        int found_intact = 0;
        em_cmd_decoder_t dec;
        em_command_t out;

        /* mode 0: pure random; 1: garbage + intact command; 2: mutated commands + intact command */
        if (mode == 0) {
            len = rnd() % 200;
            for (i = 0; i < len; i++) {
                stream[i] = rnd_byte();
            }
        } else {
            size_t garbage = rnd() % 40;
            if (mode == 1) {
                for (i = 0; i < garbage; i++) {
                    stream[len++] = rnd_byte();
                }
            } else {
                int k, flips;
                size_t start = len;
                uint8_t c2, a2[EM_CMD_MAX_ARG_BYTES], l2;
                len += rnd_command(stream + len, &c2, a2, &l2);
                len += rnd_command(stream + len, &c2, a2, &l2);
                flips = 1 + (int)(rnd() % 3);
                for (k = 0; k < flips; k++) {
                    size_t at = start + rnd() % (len - start);
                    switch (rnd() % 3) {
                    case 0: stream[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
                    case 1: memmove(stream + at, stream + at + 1, len - at - 1); len--; break;
                    default: memmove(stream + at + 1, stream + at, len - at); stream[at] = rnd_byte(); len++; break;
                    }
                }
            }
            cmd_start = len;
            len += rnd_command(stream + len, &cmd, args, &alen);
            cmd_end = len;
            intact++;
            /* a little trailing garbage */
            for (i = rnd() % 4; i > 0; i--) {
                stream[len++] = rnd_byte();
            }
        }

        em_cmd_decoder_init(&dec);
        for (i = 0; i < len; i++) {
            if (em_cmd_decoder_feed(&dec, stream[i], &out)) {
                returned++;
                if (!returned_frame_is_real(stream, i + 1, &out)) {
                    bogus++;
                    fprintf(stderr, "trial %ld: decoder returned a frame that is not in the stream\n", t);
                }
                if (mode != 0 && i + 1 == cmd_end && out.cmd == cmd && out.arg_len == alen &&
                    memcmp(out.args, args, alen) == 0) {
                    found_intact = 1;
                } else if (mode != 0 && i + 1 > cmd_start && i + 1 <= cmd_end) {
                    /* a different valid frame made partly of garbage ended inside the
                     * intact command and consumed its first bytes */
                    collisions++;
                }
            }
        }
        intact_found += found_intact;
    }
    printf("fuzz_cmd: %ld trials, %ld commands returned, %ld/%ld intact commands found, "
           "%ld collisions, %ld bogus\n", trials, returned, intact_found, intact, collisions, bogus);
    /* An intact command is lost only if garbage forms another CRC-valid frame ending
     * inside it (odds about 2^-16 per candidate, or a deletion that happens to rebuild
     * the original mutated frame); allow that, but nothing else. */
    if (bogus != 0 || intact_found + collisions != intact || collisions * 1000 > intact) {
        return 1;
    }
    return 0;
}
