/*
 * test_core.c - host unit tests of the firmware's protocol core against the
 * shared vectors in firmware/test_vectors.txt (the Python tests read the same file).
 *
 * Usage: test_core PATH/TO/test_vectors.txt
 */
#include "em_protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 16384
#define MAX_BYTES 4096

static int g_checks;
static int g_failures;

#define CHECK(cond, ...)                                         \
    do {                                                         \
        g_checks++;                                              \
        if (!(cond)) {                                           \
            g_failures++;                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fprintf(stderr, "\n");                               \
        }                                                        \
    } while (0)

/* Value of "key=" in a vector line, copied into out (NUL-terminated); 0 if absent. */
static int field(const char *line, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    const char *p = line;
    while ((p = strstr(p, key)) != NULL) {
        if ((p == line || p[-1] == ' ') && p[klen] == '=') {
            const char *v = p + klen + 1;
            size_t n = strcspn(v, " \n");
            if (n >= cap) {
                return 0;
            }
            memcpy(out, v, n);
            out[n] = '\0';
            return 1;
        }
        p += klen;
    }
    return 0;
}

static long field_long(const char *line, const char *key)
{
    char buf[64];
    if (!field(line, key, buf, sizeof(buf))) {
        fprintf(stderr, "vector without %s: %s", key, line);
        exit(2);
    }
    return strtol(buf, NULL, 0);
}

/* Hex string ("-" = empty) to bytes; returns the length. */
static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    if (strcmp(hex, "-") == 0) {
        return 0;
    }
    while (hex[0] && hex[1] && n < cap) {
        unsigned int b;
        if (sscanf(hex, "%2x", &b) != 1) {
            fprintf(stderr, "bad hex: %s\n", hex);
            exit(2);
        }
        out[n++] = (uint8_t)b;
        hex += 2;
    }
    return n;
}

static size_t field_bytes(const char *line, const char *key, uint8_t *out, size_t cap)
{
    static char buf[MAX_LINE];
    if (!field(line, key, buf, sizeof(buf))) {
        fprintf(stderr, "vector without %s: %s", key, line);
        exit(2);
    }
    return unhex(buf, out, cap);
}

static void check_crc(const char *name, const char *line)
{
    uint8_t data[MAX_BYTES];
    size_t n = field_bytes(line, "data", data, sizeof(data));
    uint16_t want = (uint16_t)strtol(strstr(line, "crc=") + 4, NULL, 16);
    CHECK(em_crc16(EM_CRC16_INIT, data, n) == want, "crc %s", name);
}

static void check_audio(const char *name, const char *line)
{
    static char list[MAX_LINE];
    uint16_t samples[EM_FRAME_MAX_SAMPLES];
    uint8_t want[MAX_BYTES], got[MAX_BYTES];
    uint16_t count = 0;
    char *tok;
    size_t want_len = field_bytes(line, "frame", want, sizeof(want));
    size_t got_len;
    field(line, "samples", list, sizeof(list));
    for (tok = strtok(list, ","); tok && count < EM_FRAME_MAX_SAMPLES; tok = strtok(NULL, ",")) {
        samples[count++] = (uint16_t)atoi(tok);
    }
    got_len = em_encode_audio_frame(got, sizeof(got), (uint8_t)field_long(line, "flags"),
                                    (uint16_t)field_long(line, "seq"), (uint16_t)field_long(line, "rate"),
                                    samples, count);
    CHECK(got_len == want_len && memcmp(got, want, want_len) == 0, "audio frame %s", name);
    /* the firmware streams header + payload + CRC piecewise: that must give the same bytes */
    {
        uint8_t hdr[EM_FRAME_HEADER_BYTES];
        uint16_t crc;
        size_t i;
        em_encode_header(hdr, EM_KIND_AUDIO, (uint8_t)field_long(line, "flags"),
                         (uint16_t)field_long(line, "seq"), (uint16_t)field_long(line, "rate"), count);
        crc = em_crc16(EM_CRC16_INIT, hdr + 2, EM_FRAME_HEADER_BYTES - 2);
        for (i = 0; i < count; i++) {
            crc = em_crc16_update(crc, (uint8_t)(samples[i] & 0xFF));
            crc = em_crc16_update(crc, (uint8_t)(samples[i] >> 8));
        }
        CHECK(memcmp(hdr, want, sizeof(hdr)) == 0, "header %s", name);
        CHECK(want[want_len - 2] == (crc & 0xFF) && want[want_len - 1] == (crc >> 8), "streamed crc %s", name);
    }
}

static void check_reply(const char *name, const char *line)
{
    uint8_t payload[MAX_BYTES], want[MAX_BYTES], got[MAX_BYTES];
    size_t plen = field_bytes(line, "payload", payload, sizeof(payload));
    size_t want_len = field_bytes(line, "frame", want, sizeof(want));
    size_t got_len = em_encode_reply_frame(got, sizeof(got), (uint8_t)field_long(line, "flags"),
                                           (uint16_t)field_long(line, "seq"),
                                           (uint16_t)field_long(line, "rate"), payload, (uint16_t)plen);
    CHECK(got_len == want_len && memcmp(got, want, want_len) == 0, "reply frame %s", name);
}

static void check_command(const char *name, const char *line)
{
    uint8_t args[64], want[64], got[64];
    size_t alen = field_bytes(line, "args", args, sizeof(args));
    size_t want_len = field_bytes(line, "frame", want, sizeof(want));
    uint8_t cmd = (uint8_t)field_long(line, "cmd");
    size_t got_len = em_encode_command(got, sizeof(got), cmd, args, (uint8_t)alen);
    em_cmd_decoder_t dec;
    em_command_t out;
    size_t i;
    int decoded = 0;
    CHECK(got_len == want_len && memcmp(got, want, want_len) == 0, "command encode %s", name);
    em_cmd_decoder_init(&dec);
    for (i = 0; i < want_len; i++) {
        int done = em_cmd_decoder_feed(&dec, want[i], &out);
        CHECK(done == (i + 1 == want_len), "command %s completes only on its last byte", name);
        decoded |= done;
    }
    CHECK(decoded && out.cmd == cmd && out.arg_len == alen && memcmp(out.args, args, alen) == 0,
          "command decode %s", name);
}

static void check_cmdstream(const char *name, const char *line)
{
    static char expect[MAX_LINE];
    char got_text[MAX_LINE] = "";
    uint8_t input[MAX_BYTES];
    size_t n = field_bytes(line, "input", input, sizeof(input));
    size_t i;
    em_cmd_decoder_t dec;
    em_command_t out;
    field(line, "cmds", expect, sizeof(expect));
    em_cmd_decoder_init(&dec);
    for (i = 0; i < n; i++) {
        if (em_cmd_decoder_feed(&dec, input[i], &out)) {
            char item[64];
            size_t k, len;
            len = (size_t)snprintf(item, sizeof(item), "%s%d:", got_text[0] ? ";" : "", out.cmd);
            if (out.arg_len == 0) {
                snprintf(item + len, sizeof(item) - len, "-");
            }
            for (k = 0; k < out.arg_len; k++) {
                len = strlen(item);
                snprintf(item + len, sizeof(item) - len, "%02x", out.args[k]);
            }
            strncat(got_text, item, sizeof(got_text) - strlen(got_text) - 1);
        }
    }
    if (!got_text[0]) {
        strcpy(got_text, "-");
    }
    CHECK(strcmp(got_text, expect) == 0, "cmdstream %s: got %s want %s", name, got_text, expect);
}

static void check_handle_command(void)
{
    em_device_state_t st = {0, 1, 16000, 0};
    em_command_t cmd;
    uint8_t reply[EM_FRAME_MAX_REPLY_BYTES];
    size_t n;

    memset(&cmd, 0, sizeof(cmd));
    cmd.cmd = EM_CMD_SET_ALARM;
    cmd.arg_len = 1;
    cmd.args[0] = 1;
    n = em_handle_command(&cmd, &st, "uno", reply, sizeof(reply));
    CHECK(n == 2 && reply[0] == EM_CMD_SET_ALARM && reply[1] == EM_STATUS_OK && st.alarm_on == 1, "alarm on");
    cmd.args[0] = 7;
    n = em_handle_command(&cmd, &st, "uno", reply, sizeof(reply));
    CHECK(n == 2 && reply[1] == EM_STATUS_BAD_ARG && st.alarm_on == 1, "alarm bad arg keeps state");

    cmd.cmd = EM_CMD_SET_RATE;
    cmd.arg_len = 2;
    cmd.args[0] = 0x40; /* 8000 */
    cmd.args[1] = 0x1F;
    n = em_handle_command(&cmd, &st, "uno", reply, sizeof(reply));
    CHECK(n == 2 && reply[1] == EM_STATUS_OK && st.sample_rate_hz == 8000 && st.restart_sampler == 1,
          "rate 8000 restarts a running sampler");
    st.restart_sampler = 0;
    cmd.args[0] = 0x44; /* 44100 & 0xFFFF is not supported */
    cmd.args[1] = 0xAC;
    n = em_handle_command(&cmd, &st, "uno", reply, sizeof(reply));
    CHECK(reply[1] == EM_STATUS_BAD_ARG && st.sample_rate_hz == 8000 && !st.restart_sampler, "bad rate");

    cmd.cmd = EM_CMD_STOP;
    cmd.arg_len = 0;
    em_handle_command(&cmd, &st, "uno", reply, sizeof(reply));
    CHECK(st.streaming == 0, "stop");
    cmd.cmd = EM_CMD_START;
    em_handle_command(&cmd, &st, "uno", reply, sizeof(reply));
    CHECK(st.streaming == 1 && st.restart_sampler == 1, "start");

    cmd.cmd = EM_CMD_PING;
    n = em_handle_command(&cmd, &st, "nano", reply, sizeof(reply));
    CHECK(n == 10 && reply[1] == EM_STATUS_OK && reply[2] == EM_PROTOCOL_VERSION &&
              reply[3] == EM_FIRMWARE_VERSION_MAJOR && memcmp(reply + 6, "nano", 4) == 0,
          "ping reply");
    cmd.cmd = 0x66;
    n = em_handle_command(&cmd, &st, "uno", reply, sizeof(reply));
    CHECK(n == 2 && reply[1] == EM_STATUS_UNKNOWN_CMD, "unknown command");
}

int main(int argc, char **argv)
{
    static char line[MAX_LINE];
    char kind[32], name[128];
    FILE *f;
    int vectors = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s test_vectors.txt\n", argv[0]);
        return 2;
    }
    f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#' || line[0] == '\n' || sscanf(line, "%31s %127s", kind, name) != 2) {
            continue;
        }
        vectors++;
        if (strcmp(kind, "crc") == 0) {
            check_crc(name, line);
        } else if (strcmp(kind, "audio") == 0) {
            check_audio(name, line);
        } else if (strcmp(kind, "reply") == 0) {
            check_reply(name, line);
        } else if (strcmp(kind, "command") == 0) {
            check_command(name, line);
        } else if (strcmp(kind, "cmdstream") == 0) {
            check_cmdstream(name, line);
        } else {
            vectors--; /* framestream / sample: gateway-side vectors, checked by the Python tests */
        }
    }
    fclose(f);
    check_handle_command();
    printf("test_core: %d vectors, %d checks, %d failures\n", vectors, g_checks, g_failures);
    return g_failures == 0 && vectors > 10 ? 0 : 1;
}
