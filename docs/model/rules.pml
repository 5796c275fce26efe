/* The deciding rules of meshd, read off the code by meshd.explore.tables (python -m meshd.explore.tables).
 * Generated: do not edit. tests/test_model.py fails when this file differs from what the code decides. */

#define REL_OLDER 0
#define REL_EQUAL 1
#define REL_NEWER 2

#define HOLD_NONE 0
#define HOLD_SAME 1
#define HOLD_OTHER 2

#define ANS_ACCEPT 0
#define ANS_STALE_EPOCH 1
#define ANS_SEALED 2
#define ANS_RETIRED 3
#define ANS_BEHIND 4
#define ANS_GOODBYE 5
#define ANS_NONE 6

#define ACT_NONE 0
#define ACT_LINK 1
#define ACT_FOLLOW 2
#define ACT_LEAVE 3

#define OUT_NOTHING 0
#define OUT_LINK 1
#define OUT_ADOPT 2
#define OUT_SURPASS 3
#define OUT_LEAVE 4

#define STAND_FIXED 0
#define STAND_OPEN 1
#define STAND_SEALED 2

#define MOVE_STAY 0
#define MOVE_LINK 1
#define MOVE_JOIN 2
#define MOVE_MINT_ABOVE_PEER 3
#define MOVE_MINT_ABOVE_OURS 4
#define MOVE_EXIT 5

/* judge(mode auto?, relation, member held, ready?, our hello fresh?) -> answer, action (MeshModel.judge) */
inline judge(auto, rel, hold, rdy, fresh, answer, action) {
    if
    :: auto == 0 && rel == REL_OLDER && fresh == 1 -> answer = ANS_STALE_EPOCH; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 1 && hold == HOLD_NONE && rdy == 0 -> answer = ANS_STALE_EPOCH; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 1 && hold == HOLD_SAME && rdy == 0 -> answer = ANS_STALE_EPOCH; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 1 && hold == HOLD_SAME && rdy == 1 -> answer = ANS_STALE_EPOCH; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 1 && hold == HOLD_OTHER && rdy == 0 -> answer = ANS_SEALED; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 1 && hold == HOLD_OTHER && rdy == 1 -> answer = ANS_SEALED; action = ACT_NONE
    :: auto == 0 && rel == REL_OLDER && fresh == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 0 && hold == HOLD_NONE && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 0 && hold == HOLD_SAME && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 0 && hold == HOLD_SAME && rdy == 1 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 0 && hold == HOLD_OTHER && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_OLDER && fresh == 0 && hold == HOLD_OTHER && rdy == 1 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 0 && rel == REL_EQUAL && fresh == 1 -> answer = ANS_ACCEPT; action = ACT_LINK
    :: auto == 1 && rel == REL_EQUAL && fresh == 1 && hold == HOLD_NONE && rdy == 0 -> answer = ANS_ACCEPT; action = ACT_LINK
    :: auto == 1 && rel == REL_EQUAL && fresh == 1 && hold == HOLD_SAME && rdy == 0 -> answer = ANS_ACCEPT; action = ACT_LINK
    :: auto == 1 && rel == REL_EQUAL && fresh == 1 && hold == HOLD_SAME && rdy == 1 -> answer = ANS_ACCEPT; action = ACT_LINK
    :: auto == 1 && rel == REL_EQUAL && fresh == 1 && hold == HOLD_OTHER && rdy == 0 -> answer = ANS_SEALED; action = ACT_LEAVE
    :: auto == 1 && rel == REL_EQUAL && fresh == 1 && hold == HOLD_OTHER && rdy == 1 -> answer = ANS_RETIRED; action = ACT_NONE
    :: auto == 0 && rel == REL_EQUAL && fresh == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_EQUAL && fresh == 0 && hold == HOLD_NONE && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_EQUAL && fresh == 0 && hold == HOLD_SAME && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_EQUAL && fresh == 0 && hold == HOLD_SAME && rdy == 1 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_EQUAL && fresh == 0 && hold == HOLD_OTHER && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_EQUAL && fresh == 0 && hold == HOLD_OTHER && rdy == 1 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 0 && rel == REL_NEWER && fresh == 1 -> answer = ANS_BEHIND; action = ACT_FOLLOW
    :: auto == 1 && rel == REL_NEWER && fresh == 1 && hold == HOLD_NONE && rdy == 0 -> answer = ANS_BEHIND; action = ACT_FOLLOW
    :: auto == 1 && rel == REL_NEWER && fresh == 1 && hold == HOLD_SAME && rdy == 0 -> answer = ANS_BEHIND; action = ACT_FOLLOW
    :: auto == 1 && rel == REL_NEWER && fresh == 1 && hold == HOLD_SAME && rdy == 1 -> answer = ANS_BEHIND; action = ACT_FOLLOW
    :: auto == 1 && rel == REL_NEWER && fresh == 1 && hold == HOLD_OTHER && rdy == 0 -> answer = ANS_BEHIND; action = ACT_FOLLOW
    :: auto == 1 && rel == REL_NEWER && fresh == 1 && hold == HOLD_OTHER && rdy == 1 -> answer = ANS_RETIRED; action = ACT_NONE
    :: auto == 0 && rel == REL_NEWER && fresh == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_NEWER && fresh == 0 && hold == HOLD_NONE && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_NEWER && fresh == 0 && hold == HOLD_SAME && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_NEWER && fresh == 0 && hold == HOLD_SAME && rdy == 1 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_NEWER && fresh == 0 && hold == HOLD_OTHER && rdy == 0 -> answer = ANS_GOODBYE; action = ACT_NONE
    :: auto == 1 && rel == REL_NEWER && fresh == 0 && hold == HOLD_OTHER && rdy == 1 -> answer = ANS_GOODBYE; action = ACT_NONE
    fi
}

/* conclude(action, peer's answer) -> outcome (CONCLUSIONS) */
inline conclude(action, answer, outcome) {
    if
    :: action == ACT_NONE && answer == ANS_ACCEPT -> outcome = OUT_NOTHING
    :: action == ACT_NONE && answer == ANS_STALE_EPOCH -> outcome = OUT_NOTHING
    :: action == ACT_NONE && answer == ANS_SEALED -> outcome = OUT_NOTHING
    :: action == ACT_NONE && answer == ANS_RETIRED -> outcome = OUT_NOTHING
    :: action == ACT_NONE && answer == ANS_BEHIND -> outcome = OUT_NOTHING
    :: action == ACT_NONE && answer == ANS_GOODBYE -> outcome = OUT_NOTHING
    :: action == ACT_NONE && answer == ANS_NONE -> outcome = OUT_NOTHING
    :: action == ACT_LINK && answer == ANS_ACCEPT -> outcome = OUT_LINK
    :: action == ACT_LINK && answer == ANS_STALE_EPOCH -> outcome = OUT_NOTHING
    :: action == ACT_LINK && answer == ANS_SEALED -> outcome = OUT_LEAVE
    :: action == ACT_LINK && answer == ANS_RETIRED -> outcome = OUT_NOTHING
    :: action == ACT_LINK && answer == ANS_BEHIND -> outcome = OUT_NOTHING
    :: action == ACT_LINK && answer == ANS_GOODBYE -> outcome = OUT_NOTHING
    :: action == ACT_LINK && answer == ANS_NONE -> outcome = OUT_NOTHING
    :: action == ACT_FOLLOW && answer == ANS_ACCEPT -> outcome = OUT_NOTHING
    :: action == ACT_FOLLOW && answer == ANS_STALE_EPOCH -> outcome = OUT_ADOPT
    :: action == ACT_FOLLOW && answer == ANS_SEALED -> outcome = OUT_SURPASS
    :: action == ACT_FOLLOW && answer == ANS_RETIRED -> outcome = OUT_NOTHING
    :: action == ACT_FOLLOW && answer == ANS_BEHIND -> outcome = OUT_NOTHING
    :: action == ACT_FOLLOW && answer == ANS_GOODBYE -> outcome = OUT_NOTHING
    :: action == ACT_FOLLOW && answer == ANS_NONE -> outcome = OUT_NOTHING
    :: action == ACT_LEAVE && answer == ANS_ACCEPT -> outcome = OUT_LEAVE
    :: action == ACT_LEAVE && answer == ANS_STALE_EPOCH -> outcome = OUT_LEAVE
    :: action == ACT_LEAVE && answer == ANS_SEALED -> outcome = OUT_LEAVE
    :: action == ACT_LEAVE && answer == ANS_RETIRED -> outcome = OUT_LEAVE
    :: action == ACT_LEAVE && answer == ANS_BEHIND -> outcome = OUT_LEAVE
    :: action == ACT_LEAVE && answer == ANS_GOODBYE -> outcome = OUT_LEAVE
    :: action == ACT_LEAVE && answer == ANS_NONE -> outcome = OUT_NOTHING
    fi
}

/* move(outcome, standing) -> move (MOVES) */
inline move(outcome, standing, what) {
    if
    :: outcome == OUT_NOTHING && standing == STAND_FIXED -> what = MOVE_STAY
    :: outcome == OUT_NOTHING && standing == STAND_OPEN -> what = MOVE_STAY
    :: outcome == OUT_NOTHING && standing == STAND_SEALED -> what = MOVE_STAY
    :: outcome == OUT_LINK && standing == STAND_FIXED -> what = MOVE_LINK
    :: outcome == OUT_LINK && standing == STAND_OPEN -> what = MOVE_LINK
    :: outcome == OUT_LINK && standing == STAND_SEALED -> what = MOVE_LINK
    :: outcome == OUT_ADOPT && standing == STAND_FIXED -> what = MOVE_EXIT
    :: outcome == OUT_ADOPT && standing == STAND_OPEN -> what = MOVE_JOIN
    :: outcome == OUT_ADOPT && standing == STAND_SEALED -> what = MOVE_EXIT
    :: outcome == OUT_SURPASS && standing == STAND_FIXED -> what = MOVE_EXIT
    :: outcome == OUT_SURPASS && standing == STAND_OPEN -> what = MOVE_MINT_ABOVE_PEER
    :: outcome == OUT_SURPASS && standing == STAND_SEALED -> what = MOVE_EXIT
    :: outcome == OUT_LEAVE && standing == STAND_FIXED -> what = MOVE_STAY
    :: outcome == OUT_LEAVE && standing == STAND_OPEN -> what = MOVE_MINT_ABOVE_OURS
    :: outcome == OUT_LEAVE && standing == STAND_SEALED -> what = MOVE_EXIT
    fi
}
